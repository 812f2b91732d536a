/* test_robust_load.c - the loaders against hostile and changing files (issue 11): lying Hugging
 * Face configs, FIFOs and directories where a file is expected, more than 256 layers and long
 * layer names, a bias of the wrong shape, model files truncated or overwritten under their
 * mapping, writes to a full device, terminal escapes in names and metadata, a CSV with a byte
 * order mark, and the memory check. A FIFO that blocked would hang the test: alarm() turns a
 * regression into a failed (killed) test binary instead. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "qscope/dataset.h"
#include "qscope/lm.h"
#include "qscope/mlp.h"
#include "qscope/safetensors.h"
#include "qscope/tokens.h"
#include "test.h"

static char tmp_[128];

static void setup(void)
{
    if (!tmp_[0]) {
        snprintf(tmp_, sizeof tmp_, "/tmp/qs_test_robust_%d", (int)getpid());
        CHECK(qs_mkdir_p(tmp_) == 0);
    }
}

static void write_text(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(s, f);
        fclose(f);
    }
}

static int has(const char *msg, const char *want)
{
    if (strstr(msg, want))
        return 1;
    fprintf(stderr, "  message '%s' lacks '%s'\n", msg, want);
    return 0;
}

static int no_esc(const char *msg)
{
    if (!strchr(msg, 0x1b))
        return 1;
    fprintf(stderr, "  message holds an ESC byte\n");
    return 0;
}

/* Copies the GPT-2 fixture's weights into DIR/model.safetensors and writes CONFIG. */
static void gpt2_dir(const char *dir, const char *config)
{
    char cmd[512], cfg[256];
    CHECK(qs_mkdir_p(dir) == 0);
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/lm_gpt2/model.safetensors %s/", dir);
    CHECK(system(cmd) == 0);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    write_text(cfg, config);
}

static void expect_lm_fail(const char *dir, const char *want)
{
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_lm_load(dir, &m, &e) < 0);
    CHECK(m == NULL);
    CHECK(has(e.msg, want));
    qs_lm_free(m);
}

/* n_layer 300000000 crashed in qs_lm_free after the failed allocation; 4 * n_embd, n_layer * 4
 * and head_dim * heads overflowed int. Each is refused with a message now. */
static void test_lying_hf_config(void)
{
    setup();
    char dir[256];
    snprintf(dir, sizeof dir, "%s/gpt2", tmp_);
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                  "\"n_layer\": 300000000, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}");
    expect_lm_fail(dir, "300000000");
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                  "\"n_layer\": 700000, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}");
    expect_lm_fail(dir, "n_layer 700000");
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 999999936, "
                  "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16}");
    expect_lm_fail(dir, "config.json");
    gpt2_dir(dir, "{\"model_type\": \"llama\", \"vocab_size\": 40, \"hidden_size\": 32, "
                  "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"head_dim\": 999999999, "
                  "\"intermediate_size\": 40, \"max_position_embeddings\": 16}");
    expect_lm_fail(dir, "head_dim");
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                  "\"n_layer\": 2, \"n_head\": 64, \"n_positions\": 16, \"n_inner\": 48}");
    expect_lm_fail(dir, "64 heads");
    /* under-reported depth: the second block's tensors are left over */
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                  "\"n_layer\": 1, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}");
    expect_lm_fail(dir, "tensor 'h.1.");
    expect_lm_fail(dir, "not used");
    /* the honest config still loads */
    gpt2_dir(dir, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                  "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}");
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_lm_load(dir, &m, &e) == 0);
    qs_lm_free(m);
}

/* The cleanup path of a failed allocation: sites not allocated, nsites set. */
static void test_lm_free_partial(void)
{
    struct qs_lm *m = qs_calloc(1, sizeof *m);
    CHECK(m != NULL);
    if (!m)
        return;
    m->n_layer = 300000000;
    m->nsites = 1200000001;
    qs_lm_free(m); /* must not touch the missing arrays */
}

static void test_config_parse_mem(void)
{
    struct qs_lm m;
    qs_err e = {{0}};
    const char *ok = "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                     "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16}";
    memset(&m, 0, sizeof m);
    CHECK(qs_lm_parse_config(ok, strlen(ok), "c.json", &m, &e) == 0);
    CHECK(m.d_ff == 128 && m.n_layer == 2 && m.family == QS_LM_GPT2);
    /* 40000 x 65536 entries in the embedding: more than an int counts */
    const char *wide = "{\"model_type\": \"gpt2\", \"vocab_size\": 65536, \"n_embd\": 40000, "
                       "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 8}";
    memset(&m, 0, sizeof m);
    CHECK(qs_lm_parse_config(wide, strlen(wide), "c.json", &m, &e) < 0);
    CHECK(has(e.msg, "2^31"));
    const char *esc = "{\"model_type\": \"\x1b[31mbert\"}";
    memset(&m, 0, sizeof m);
    CHECK(qs_lm_parse_config(esc, strlen(esc), "c.json", &m, &e) < 0);
    CHECK(no_esc(e.msg));
    CHECK(has(e.msg, "unknown model_type"));
}

/* Every loader refuses a FIFO before it can block, and a directory by name. */
static void test_fifo_and_dir(void)
{
    setup();
    char fifo[256], dir[256], cfgdir[256], path[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", tmp_);
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0);
    qs_err e = {{0}};
    struct qs_st_file *f = NULL;
    CHECK(qs_st_open(fifo, &f, &e) < 0 && has(e.msg, "FIFO"));
    struct qs_mlp *mlp = NULL;
    CHECK(qs_mlp_load(fifo, QS_ACT_RELU, 0, &mlp, &e) < 0 && has(e.msg, "FIFO"));
    struct qs_tokens *t = NULL;
    CHECK(qs_tokens_load(fifo, &t, &e) < 0 && has(e.msg, "FIFO"));
    struct qs_dataset *d = NULL;
    CHECK(qs_dataset_load_csv(fifo, NULL, &d, &e) < 0 && has(e.msg, "FIFO"));
    /* a model folder whose config.json is a FIFO */
    snprintf(cfgdir, sizeof cfgdir, "%s/fifomodel", tmp_);
    CHECK(qs_mkdir_p(cfgdir) == 0);
    snprintf(path, sizeof path, "%s/config.json", cfgdir);
    unlink(path);
    CHECK(mkfifo(path, 0600) == 0);
    expect_lm_fail(cfgdir, "FIFO");
    /* a directory given as a .bin token file said "out of memory for 9223372036854775807" */
    snprintf(dir, sizeof dir, "%s/tokens.bin", tmp_);
    CHECK(qs_mkdir_p(dir) == 0);
    CHECK(qs_tokens_load(dir, &t, &e) < 0 && has(e.msg, "is a directory"));
    CHECK(!strstr(e.msg, "out of memory"));
    CHECK(qs_dataset_load_csv(dir, NULL, &d, &e) < 0 && has(e.msg, "is a directory"));
}

/* An MLP file with n layers named by qscope metadata (names from name_of). */
static int write_meta_mlp(const char *path, int n, void (*name_of)(int, char *, size_t))
{
    struct qs_st_out *o = qs_calloc((size_t)n, sizeof *o);
    char(*names)[200] = qs_calloc((size_t)n, sizeof *names);
    char *layers = qs_calloc((size_t)n * 200, 1), *acts = qs_calloc((size_t)n * 8, 1);
    static const float w[4] = {1, 0, 0, 1};
    size_t ll = 0, al = 0;
    for (int i = 0; i < n; i++) {
        char nm[160];
        name_of(i, nm, sizeof nm);
        snprintf(names[i], sizeof names[i], "%s.weight", nm);
        o[i] = (struct qs_st_out){names[i], QS_DT_F32, 2, {2, 2}, w};
        ll += (size_t)sprintf(layers + ll, "%s%s", i ? "," : "", nm);
        al += (size_t)sprintf(acts + al, "%s%s", i ? "," : "", i + 1 < n ? "relu" : "none");
    }
    const char *keys[] = {"qscope.arch", "qscope.layers", "qscope.acts"};
    const char *vals[] = {"mlp", layers, acts};
    qs_err e = {{0}};
    int rc = qs_st_write(path, o, n, keys, vals, 3, &e);
    if (rc < 0)
        fprintf(stderr, "  %s\n", e.msg);
    free(o);
    free(names);
    free(layers);
    free(acts);
    return rc;
}

static void short_name(int i, char *b, size_t n)
{
    snprintf(b, n, "l%d", i);
}
static void long_name(int i, char *b, size_t n)
{
    snprintf(b, n, "layer_with_a_name_much_longer_than_sixty_three_characters_in_all_%03d", i);
}

/* More than 256 layers loaded 256; names over 63 characters were cut. */
static void test_many_layers_long_names(void)
{
    setup();
    char path[256], path2[256];
    snprintf(path, sizeof path, "%s/deep.safetensors", tmp_);
    CHECK(write_meta_mlp(path, 300, short_name) == 0);
    struct qs_mlp *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) == 0);
    CHECK(m && m->nlayers == 300);
    if (m) {
        CHECK_STR(m->layers[299].name, "l299");
        /* and it saves and loads back whole */
        snprintf(path2, sizeof path2, "%s/deep2.safetensors", tmp_);
        CHECK(qs_mlp_save(m, path2, &e) == 0);
        struct qs_mlp *m2 = NULL;
        CHECK(qs_mlp_load(path2, QS_ACT_RELU, 0, &m2, &e) == 0);
        CHECK(m2 && m2->nlayers == 300);
        qs_mlp_free(m2);
    }
    qs_mlp_free(m);
    snprintf(path, sizeof path, "%s/long.safetensors", tmp_);
    CHECK(write_meta_mlp(path, 2, long_name) == 0);
    m = NULL;
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(has(e.msg, "longer than 63 characters"));
    qs_mlp_free(m);
}

/* A [2,2] bias on a 4-output layer names its shape; the path appears once. */
static void test_bias_shape_and_path_once(void)
{
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/bias.safetensors", tmp_);
    float w[8] = {0}, b[4] = {0};
    struct qs_st_out o[2] = {{"fc.weight", QS_DT_F32, 2, {4, 2}, w},
                             {"fc.bias", QS_DT_F32, 2, {2, 2}, b}};
    const char *keys[] = {"qscope.arch", "qscope.layers", "qscope.acts"};
    const char *vals[] = {"mlp", "fc", "none"};
    qs_err e = {{0}};
    CHECK(qs_st_write(path, o, 2, keys, vals, 3, &e) == 0);
    struct qs_mlp *m = NULL;
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(has(e.msg, "has shape [2,2], expected [4]"));
    const char *p1 = strstr(e.msg, path);
    CHECK(p1 && !strstr(p1 + 1, path));
    /* a layer without its weight tensor: "layer 'fc0' has no tensor", path once */
    vals[1] = "fc0";
    CHECK(qs_st_write(path, o, 2, keys, vals, 3, &e) == 0);
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(has(e.msg, "has no tensor 'fc0.weight'"));
    p1 = strstr(e.msg, path);
    CHECK(p1 && !strstr(p1 + 1, path));
}

static void test_mlp_new_overflow(void)
{
    int sizes[3] = {2, 65536, 65536};
    qs_rng r;
    qs_rng_seed(&r, 1);
    struct qs_mlp *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_mlp_new(sizes, 3, QS_ACT_RELU, &r, &m, &e) < 0);
    CHECK(m == NULL);
    CHECK(has(e.msg, "65536"));
}

/* A 64x64 F32 layer (16 KB: several pages) in an MLP file that is mapped, not copied. */
static void write_big_mlp(const char *path, float v)
{
    static float w[64 * 64], b[64];
    for (int i = 0; i < 64 * 64; i++)
        w[i] = v;
    struct qs_st_out o[2] = {{"fc.weight", QS_DT_F32, 2, {64, 64}, w},
                             {"fc.bias", QS_DT_F32, 1, {64}, b}};
    const char *keys[] = {"qscope.arch", "qscope.layers", "qscope.acts"};
    const char *vals[] = {"mlp", "fc", "none"};
    qs_err e = {{0}};
    CHECK(qs_st_write(path, o, 2, keys, vals, 3, &e) == 0);
}

struct sum_job {
    const float *w;
    size_t n;
    double sum;
};

static int sum_run(void *u, qs_err *e)
{
    (void)e;
    struct sum_job *j = u;
    volatile double s = 0;
    for (size_t i = 0; i < j->n; i++)
        s += j->w[i];
    j->sum = s;
    return 0;
}

/* Truncated under the mapping: the identity check refuses it, and a read of a vanished page
 * under the guard is an error instead of SIGBUS. */
static void test_truncated_under_mapping(void)
{
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/trunc.safetensors", tmp_);
    write_big_mlp(path, 1.0f);
    struct qs_mlp *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_mlp_load(path, QS_ACT_NONE, 0, &m, &e) == 0);
    if (!m)
        return;
    CHECK(m->layers[0].w_mapped); /* the test is about a mapping */
    CHECK(qs_st_check(m->map, &e) == 0);
    struct sum_job j = {m->layers[0].w, 64 * 64, 0};
    CHECK(qs_st_guard(sum_run, &j, &e) == 0 && j.sum == 4096.0);
    CHECK(truncate(path, 100) == 0);
    CHECK(qs_st_check(m->map, &e) < 0);
    CHECK(has(e.msg, "changed on disk since it was loaded; load it again"));
    e.msg[0] = 0;
    CHECK(qs_st_guard(sum_run, &j, &e) < 0);
    CHECK(has(e.msg, "changed on disk since it was loaded; load it again"));
    CHECK(has(e.msg, path));
    qs_mlp_free(m);
}

/* Overwritten in place, same inode and size: the mapping would mix old and new values. */
static void test_overwritten_in_place(void)
{
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/over.safetensors", tmp_);
    write_big_mlp(path, 1.0f);
    struct qs_mlp *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_mlp_load(path, QS_ACT_NONE, 0, &m, &e) == 0);
    if (!m)
        return;
    struct stat st0, st1;
    CHECK(stat(path, &st0) == 0);
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    float two = 2.0f;
    /* the last weight's bytes, rewritten in place; mtime may not move on a coarse clock, so
     * wait (bounded) until it does */
    for (int tries = 0; tries < 1000000; tries++) {
        CHECK(pwrite(fd, &two, 4, st0.st_size - 64 * 4 - 4) == 4);
        CHECK(stat(path, &st1) == 0);
        if (st1.st_mtim.tv_sec != st0.st_mtim.tv_sec || st1.st_mtim.tv_nsec != st0.st_mtim.tv_nsec)
            break;
    }
    close(fd);
    CHECK(st1.st_ino == st0.st_ino && st1.st_size == st0.st_size);
    CHECK(qs_st_check(m->map, &e) < 0);
    CHECK(has(e.msg, "changed on disk since it was loaded; load it again"));
    qs_mlp_free(m);
}

/* qs_st_write to a full device: an error, and the device node stays a device; /dev/null-like
 * devices are written in place and stay devices. Root only (mknod). */
static void test_write_to_devices(void)
{
    if (geteuid() != 0) {
        printf("  (not root: device writes skipped)\n");
        return;
    }
    setup();
    char full[256], null[256];
    snprintf(full, sizeof full, "%s/full", tmp_);
    snprintf(null, sizeof null, "%s/null", tmp_);
    unlink(full);
    unlink(null);
    CHECK(mknod(full, S_IFCHR | 0666, makedev(1, 7)) == 0);
    CHECK(mknod(null, S_IFCHR | 0666, makedev(1, 3)) == 0);
    static float w[64 * 64];
    struct qs_st_out o[1] = {{"w", QS_DT_F32, 2, {64, 64}, w}};
    qs_err e = {{0}};
    CHECK(qs_st_write(full, o, 1, NULL, NULL, 0, &e) < 0);
    CHECK(has(e.msg, "No space left"));
    struct stat st;
    CHECK(stat(full, &st) == 0 && S_ISCHR(st.st_mode));
    CHECK(qs_st_write(null, o, 1, NULL, NULL, 0, &e) == 0);
    CHECK(stat(null, &st) == 0 && S_ISCHR(st.st_mode));
    unlink(full);
    unlink(null);
}

/* Tensor names and metadata with terminal escapes never reach a message raw. */
static void test_escapes(void)
{
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/esc.safetensors", tmp_);
    float w[4] = {0};
    struct qs_st_out o[1] = {{"\x1b]0;pwned\x07x.weight", QS_DT_F32, 2, {2, 2}, w}};
    qs_err e = {{0}};
    CHECK(qs_st_write(path, o, 1, NULL, NULL, 0, &e) == 0);
    struct qs_mlp *m = NULL;
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0); /* not a Sequential name */
    CHECK(no_esc(e.msg));
    const char *keys[] = {"qscope.arch"};
    const char *vals[] = {"\x1b[2J\x1b[31mevil"};
    o[0].name = "0.weight";
    CHECK(qs_st_write(path, o, 1, keys, vals, 1, &e) == 0);
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(has(e.msg, "not an MLP") && no_esc(e.msg));
    /* a layer name with an escape in qscope.layers */
    const char *k3[] = {"qscope.arch", "qscope.layers", "qscope.acts"};
    const char *v3[] = {"mlp", "\x1b[31mfc", "none"};
    o[0].name = "\x1b[31mfc.weight";
    CHECK(qs_st_write(path, o, 1, k3, v3, 3, &e) == 0);
    CHECK(qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(has(e.msg, "control characters") && no_esc(e.msg));
}

static void test_csv_bom(void)
{
    const char *hdr = "\xef\xbb\xbf"
                      "a,b,label\n1,2,0\n3,4,1\n";
    const char *nohdr = "\xef\xbb\xbf"
                        "1,2,0\n3,4,1\n5,6,1\n";
    struct qs_dataset *d = NULL;
    qs_err e = {{0}};
    CHECK(qs_dataset_load_csv_mem(hdr, strlen(hdr), NULL, "bom.csv", &d, &e) == 0);
    CHECK(d && d->n == 2 && !strcmp(d->feat_names[0], "a"));
    qs_dataset_free(d);
    d = NULL;
    CHECK(qs_dataset_load_csv_mem(nohdr, strlen(nohdr), NULL, "bom.csv", &d, &e) == 0);
    CHECK(d && d->n == 3); /* the first row is data, not a header */
    qs_dataset_free(d);
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/bom.csv", tmp_);
    write_text(path, nohdr);
    d = NULL;
    CHECK(qs_dataset_load_csv(path, NULL, &d, &e) == 0);
    CHECK(d && d->n == 3);
    qs_dataset_free(d);
}

/* With QSCOPE_MEM_LIMIT low, large requests are refused with the figure. */
static void test_mem_limit(void)
{
    setenv("QSCOPE_MEM_LIMIT", "2000000", 1);
    int sizes[2] = {1000, 1000}; /* 4 MB of weights */
    qs_rng r;
    qs_rng_seed(&r, 1);
    struct qs_mlp *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_mlp_new(sizes, 2, QS_ACT_RELU, &r, &m, &e) < 0);
    CHECK(has(e.msg, "needs 4.0 MB but only 2.0 MB of memory is available"));
    setup();
    char path[256];
    snprintf(path, sizeof path, "%s/tok.bin", tmp_);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        static unsigned char z[1 << 20];
        fwrite(z, 1, sizeof z, f);
        fclose(f);
    }
    struct qs_tokens *t = NULL;
    CHECK(qs_tokens_load(path, &t, &e) < 0);
    CHECK(has(e.msg, "needs") && has(e.msg, "tok.bin"));
    unsetenv("QSCOPE_MEM_LIMIT");
    CHECK(qs_tokens_load(path, &t, &e) == 0);
    qs_tokens_free(t);
}

/* The scratch folder goes after the last case: not a test (it prints no PASS line); a failure
 * to remove it makes the binary exit 1. */
static int cleanup(void)
{
    if (!tmp_[0])
        return 0;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmp_);
        return -1;
    }
    return 0;
}

int main(void)
{
    alarm(120); /* a loader that blocks on a FIFO kills the binary: a failure, never a hang */
    static const struct qs_test_case cases[] = {
        TEST_CASE(test_lying_hf_config),
        TEST_CASE(test_lm_free_partial),
        TEST_CASE(test_config_parse_mem),
        TEST_CASE(test_fifo_and_dir),
        TEST_CASE(test_many_layers_long_names),
        TEST_CASE(test_bias_shape_and_path_once),
        TEST_CASE(test_mlp_new_overflow),
        TEST_CASE(test_truncated_under_mapping),
        TEST_CASE(test_overwritten_in_place),
        TEST_CASE(test_write_to_devices),
        TEST_CASE(test_escapes),
        TEST_CASE(test_csv_bom),
        TEST_CASE(test_mem_limit),
    };
    int rc = qs_test_run("robust_load", cases, (int)(sizeof cases / sizeof cases[0]));
    return cleanup() != 0 ? 1 : rc;
}
