/* test_lm_packed.c - `export model DIR packed` on transformers (issue 12): each quantized site
 * holds its packed codes and scales and its correction's fitted factors (packfile.h), and
 * qs_lm_load reads the folder back through packfile.c's site reader.
 *
 * Checked on tiny-gpt2 and tiny-llama:
 * - the file's int4/group:32 codes and F16 scales, decoded here independently from the layout
 *   packfile.h documents (two's-complement nibbles, LSB first; one F16 scale per 32 elements of a
 *   row), are the session's quantized weights to the bit;
 * - the reloaded model's sites hold W' = Q(W) + l rt and b' = b + db as the session's forward
 *   forms them (bitwise), and its float eval is the session's quantized eval (the same double);
 * - the low-rank factors and the bias correction are written as fitted (bytes equal);
 * - the file's bits per weight (every site's weight tensors and correction tensors, biases left
 *   out as `layers` leaves them out) is the bench's qs_bench_bits_per_weight, and the file is
 *   far smaller than the dequantized export;
 * - float sites stay in the Hugging Face layout (GPT-2 Conv1D) and reload exactly;
 * - a damaged packed site is refused by the same checks as a packed MLP layer, naming the file
 *   and the tensor; a LLaMA bias correction (no bias to hold it) is refused at export. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle.h"
#include "qscope/cmd.h"
#include "qscope/format.h"
#include "qscope/safetensors.h"
#include "test.h"

static const char *models_[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};
/* a site corrected with a low-rank term, one with a bias term (GPT-2 only) */
static const char *lr_site_[] = {"h.0.mlp.c_fc", "model.layers.0.mlp.up_proj"};
static const char *bias_site_ = "h.1.attn.c_attn";

static int run(struct qs_ctx *c, const char *line)
{
    qs_err e;
    if (qs_exec_line(c, line, &e) < 0) {
        fprintf(stderr, "  '%s': %s\n", line, e.msg);
        return -1;
    }
    return 0;
}

static void quiet(void *u, const cJSON *o, const char *t)
{
    (void)u;
    (void)o;
    (void)t;
}

static void quiet_note(void *u, const char *m)
{
    (void)u;
    (void)m;
}

static char tmp_[64], text_[96];

/* The first 24000 bytes of the license text (byte tokens): 37 held-out windows instead of 225,
 * so that the evals stay quick under ASan; written into the test's own folder. */
static const char *tmpdir(void)
{
    if (!tmp_[0]) {
        snprintf(tmp_, sizeof tmp_, "/tmp/qs_lm_packed_XXXXXX");
        if (!mkdtemp(tmp_)) {
            tmp_[0] = 0;
            return tmp_;
        }
        snprintf(text_, sizeof text_, "%s/text.txt", tmp_);
        static char buf[24000];
        FILE *in = fopen(QS_TEST_LM_TEXT, "rb"), *out = fopen(text_, "wb");
        size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
        if (!out || n != sizeof buf || fwrite(buf, 1, n, out) != n)
            text_[0] = 0;
        if (in)
            fclose(in);
        if (out)
            fclose(out);
    }
    return tmp_;
}

/* A model folder with the short text, as qs_test_open_lm opens the full one. */
static struct qs_bench *open_lm(const char *dir)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    if (!b || qs_lm_load(dir, &m, &e) < 0 || qs_bench_set_lm(b, m, dir, &e) < 0 ||
        qs_tokens_load(text_, &t, &e) < 0 || qs_bench_set_tokens(b, t, text_, &e) < 0) {
        fprintf(stderr, "  %s: %s\n", dir, e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* load model DIR; load data (the short text) */
static int load(struct qs_ctx *c, const char *dir)
{
    char line[512];
    snprintf(line, sizeof line, "load model %s", dir);
    if (run(c, line) < 0)
        return -1;
    snprintf(line, sizeof line, "load data %s", text_);
    return run(c, line);
}

static void rmdir_model(const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

static long file_size(const char *dir)
{
    char p[256];
    struct stat st;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static float half_to_float(uint16_t h)
{
    int s = h >> 15, ex = (h >> 10) & 31, m = h & 1023;
    double v = ex == 0 ? ldexp(m, -24) : ldexp(1024 + m, ex - 25);
    return (float)(s ? -v : v);
}

/* The file's tensor prefix of site NAME (qs_lm_save's names without ".weight"). */
static void tprefix(const struct qs_lm *m, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s%s",
             m->family == QS_LM_GPT2 && strcmp(name, "lm_head") ? "transformer." : "", name);
}

static const struct qs_st_tensor *tensor(const struct qs_st_file *f, const char *p,
                                         const char *suffix)
{
    char k[256];
    snprintf(k, sizeof k, "%s.%s", p, suffix);
    return qs_st_find(f, k);
}

static void test_export_packed_reload(void)
{
    const char *dir = tmpdir();
    CHECK(dir[0] != 0 && text_[0] != 0);
    for (int fam = 0; fam < 2; fam++) {
        struct qs_bench *b = qs_bench_new();
        struct qs_ctx c;
        qs_ctx_init(&c, b);
        c.emit = quiet;
        c.note = quiet_note;
        char line[512], pk[128], fq[128];
        snprintf(pk, sizeof pk, "%s/%d-packed", dir, fam);
        snprintf(fq, sizeof fq, "%s/%d-fake", dir, fam);
        CHECK(load(&c, models_[fam]) == 0);
        CHECK(run(&c, "quant * int4 gran=group:32") == 0);
        snprintf(line, sizeof line, "correct %s qera r=4", lr_site_[fam]);
        CHECK(run(&c, line) == 0);
        if (fam == 0) {
            snprintf(line, sizeof line, "correct %s bias", bias_site_);
            CHECK(run(&c, line) == 0);
        }
        snprintf(line, sizeof line, "export model %s packed", pk);
        CHECK(run(&c, line) == 0);
        snprintf(line, sizeof line, "export model %s", fq);
        CHECK(run(&c, line) == 0);
        qs_err e = {{0}};
        struct qs_lm_eval ses, rel;
        CHECK(qs_test_lm_eval(b, &ses, &e) == 0);
        const struct qs_lm *m = b->lm;
        CHECK(m != NULL);
        if (!m)
            return;

        /* the file: every site's codes and scales decoded independently; factors as fitted;
         * bits per weight as the bench counts them */
        char path[256];
        snprintf(path, sizeof path, "%s/model.safetensors", pk);
        struct qs_st_file *f = NULL;
        CHECK(qs_st_open(path, &f, &e) == 0);
        if (!f)
            return;
        CHECK_STR(qs_st_meta(f, "qscope.export"), "packed");
        double bits = 0.0, nw = 0.0;
        int nlr = 0, nbias = 0;
        for (int s = 0; s < m->nsites; s++) {
            const struct qs_lm_site *st = &m->sites[s];
            const struct qs_layer_state *ls = &b->ls[s];
            char p[160];
            tprefix(m, st->name, p, sizeof p);
            const struct qs_st_tensor *tc = tensor(f, p, "weight.codes"),
                                      *ts = tensor(f, p, "weight.scales");
            CHECK(qs_site_wq(b, s, NULL) != NULL && tc && ts && !tensor(f, p, "weight") &&
                  !tensor(f, p, "weight.zeros"));
            if (!qs_site_wq(b, s, NULL) || !tc || !ts)
                continue;
            const int G = 32, ng = (st->in + G - 1) / G;
            CHECK(tc->dtype == QS_DT_U8 && tc->nbytes == ((size_t)st->out * st->in + 1) / 2);
            CHECK(ts->dtype == QS_DT_U8 && ts->nbytes == (size_t)st->out * ng * 2);
            if (tc->nbytes != ((size_t)st->out * st->in + 1) / 2 ||
                ts->nbytes != (size_t)st->out * ng * 2)
                continue;
            const uint8_t *cb = tc->data, *sb = ts->data;
            const float *wq = qs_site_wq(b, s, NULL);
            size_t bad = 0;
            for (int i = 0; i < st->out; i++)
                for (int j = 0; j < st->in; j++) {
                    size_t k = (size_t)i * st->in + j, g = (size_t)i * ng + j / G;
                    int code = (cb[k / 2] >> (4 * (k % 2))) & 15;
                    int q = code >= 8 ? code - 16 : code;
                    float sc = half_to_float((uint16_t)(sb[2 * g] | sb[2 * g + 1] << 8));
                    float w = (float)q * sc;
                    bad += memcmp(&w, &wq[k], sizeof w) != 0;
                }
            if (bad)
                fprintf(stderr, "  %s: %zu weights decode differently\n", st->name, bad);
            CHECK(bad == 0);
            bits += 8.0 * (double)(tc->nbytes + ts->nbytes);
            nw += (double)st->out * st->in;
            const struct qs_corr *cr = &ls->corr;
            const struct qs_st_tensor *tl = tensor(f, p, "corr.l"), *tr = tensor(f, p, "corr.rt"),
                                      *tb = tensor(f, p, "corr.bias");
            if (cr->c) {
                nlr++;
                CHECK(tl && tr && tl->dtype == QS_DT_F32 && tl->shape[0] == st->out &&
                      tl->shape[1] == cr->rank && tr->shape[0] == cr->rank &&
                      tr->shape[1] == st->in);
                if (tl && tr && tl->nbytes == (size_t)st->out * cr->rank * 4 &&
                    tr->nbytes == (size_t)cr->rank * st->in * 4) {
                    CHECK(!memcmp(tl->data, cr->l, tl->nbytes));
                    CHECK(!memcmp(tr->data, cr->rt, tr->nbytes));
                    bits += 8.0 * (double)(tl->nbytes + tr->nbytes);
                }
            } else {
                CHECK(!tl && !tr);
            }
            if (cr->db) {
                nbias++;
                CHECK(tb && tb->nbytes == (size_t)st->out * 4 &&
                      !memcmp(tb->data, cr->db, (size_t)st->out * 4));
                bits += tb ? 8.0 * (double)tb->nbytes : 0.0;
            } else {
                CHECK(!tb);
            }
        }
        CHECK(nlr == 1 && nbias == (fam == 0));
        double bpw = nw > 0 ? bits / nw : 0.0;
        CHECK(bpw == qs_bench_bits_per_weight(b));
        long psize = file_size(pk), fsize = file_size(fq);
        fprintf(stderr,
                "  %s int4/g32 + corrections: %.4f bits/weight (layers: %.4f); "
                "packed %ld bytes, dequantized %ld bytes\n",
                models_[fam], bpw, qs_bench_bits_per_weight(b), psize, fsize);
        CHECK(psize > 0 && fsize > 0 && psize < fsize / 2);
        qs_st_close(f);

        /* reloaded: the sites hold the session's corrected weights, and eval agrees */
        struct qs_bench *r = open_lm(pk);
        CHECK(r != NULL);
        if (r) {
            CHECK(qs_test_lm_eval(r, &rel, &e) == 0);
            fprintf(stderr, "  session quant loss %.17g, reloaded float loss %.17g\n", ses.loss_q,
                    rel.loss);
            CHECK(rel.loss == ses.loss_q);
            CHECK(ses.loss_q != ses.loss);
            const struct qs_lm *rm = r->lm;
            CHECK(rm->nsites == m->nsites && !rm->tied);
            for (int s = 0; s < m->nsites && rm->nsites == m->nsites; s++) {
                const struct qs_lm_site *st = &m->sites[s], *rs = &rm->sites[s];
                const struct qs_corr *cr = &b->ls[s].corr;
                size_t n = (size_t)st->out * st->in, bad = 0;
                const float *wq = qs_site_wq(b, s, NULL);
                for (size_t j = 0; wq && j < n; j++) {
                    float w = cr->c ? wq[j] + cr->c[j] : wq[j];
                    bad += memcmp(&w, &rs->w[j], sizeof w) != 0;
                }
                CHECK(bad == 0);
                CHECK(!st->b == !rs->b);
                for (int j = 0; st->b && rs->b && j < st->out; j++) {
                    float bb = cr->db ? st->b[j] + cr->db[j] : st->b[j];
                    bad += memcmp(&bb, &rs->b[j], sizeof bb) != 0;
                }
                CHECK(bad == 0);
            }
            qs_bench_free(r);
        }
        qs_ctx_free(&c);
        qs_bench_free(b);
        rmdir_model(pk);
        rmdir_model(fq);
    }
}

/* Float sites stay as the Hugging Face folder has them (GPT-2: Conv1D (in, out)), the head
 * stays tied when it stays float, and the folder reloads to the session's eval. nf4 and q4_k
 * sizes are reported beside. */
static void test_float_sites_and_formats(void)
{
    const char *dir = tmpdir();
    const char *fmts[] = {"nf4", "q4_k", "nvfp4"};
    for (int fam = 0; fam < 2; fam++)
        for (int k = 0; k < 4; k++) {
            struct qs_bench *b = qs_bench_new();
            struct qs_ctx c;
            qs_ctx_init(&c, b);
            c.emit = quiet;
            c.note = quiet_note;
            char line[512], pk[128];
            snprintf(pk, sizeof pk, "%s/%d-%d", dir, fam, k);
            CHECK(load(&c, models_[fam]) == 0);
            if (k < 3)
                snprintf(line, sizeof line, "quant * %s", fmts[k]);
            else /* block 0's sites only: the rest and the head stay float */
                snprintf(line, sizeof line, "quant %s int3",
                         fam == 0 ? "h.0.*" : "model.layers.0.*");
            CHECK(run(&c, line) == 0);
            snprintf(line, sizeof line, "export model %s packed", pk);
            CHECK(run(&c, line) == 0);
            qs_err e = {{0}};
            struct qs_lm_eval ses, rel;
            CHECK(qs_test_lm_eval(b, &ses, &e) == 0);
            struct qs_bench *r = open_lm(pk);
            CHECK(r != NULL);
            if (r) {
                CHECK(qs_test_lm_eval(r, &rel, &e) == 0);
                CHECK(rel.loss == ses.loss_q);
                CHECK(r->lm->tied == (k == 3 && b->lm->tied));
                qs_bench_free(r);
            }
            if (k < 3)
                fprintf(stderr, "  %s %s: %.4f bits/weight, packed %ld bytes\n", models_[fam],
                        fmts[k], qs_bench_bits_per_weight(b), file_size(pk));
            if (k == 3) { /* float sites: the HF tensors as they were */
                char path[256];
                snprintf(path, sizeof path, "%s/model.safetensors", pk);
                struct qs_st_file *f = NULL;
                CHECK(qs_st_open(path, &f, &e) == 0);
                const struct qs_lm *m = b->lm;
                for (int s = 0; f && s < m->nsites; s++) {
                    char p[160];
                    tprefix(m, m->sites[s].name, p, sizeof p);
                    const struct qs_st_tensor *tw = tensor(f, p, "weight");
                    if (qs_site_wq(b, s, NULL)) {
                        CHECK(!tw && tensor(f, p, "weight.codes"));
                        continue;
                    }
                    if (s == m->nsites - 1 && m->tied) {
                        CHECK(!tw); /* the embedding is the head */
                        continue;
                    }
                    CHECK(tw && tw->dtype == QS_DT_F32);
                    if (!tw)
                        continue;
                    int gpt2 = m->family == QS_LM_GPT2 && s < m->nsites - 1;
                    CHECK(tw->shape[0] == (gpt2 ? m->sites[s].in : m->sites[s].out));
                    const float *v = tw->data;
                    size_t bad = 0;
                    for (int i = 0; i < m->sites[s].out; i++)
                        for (int j = 0; j < m->sites[s].in; j++) {
                            float x;
                            memcpy(&x,
                                   gpt2 ? &v[(size_t)j * m->sites[s].out + i]
                                        : &v[(size_t)i * m->sites[s].in + j],
                                   sizeof x);
                            bad += x != m->sites[s].w[(size_t)i * m->sites[s].in + j];
                        }
                    CHECK(bad == 0);
                }
                qs_st_close(f);
            }
            qs_ctx_free(&c);
            qs_bench_free(b);
            rmdir_model(pk);
        }
}

/* A damaged site goes through the packed reader's checks: one message naming the file and the
 * tensor. Also: a stray tensor is still refused by the loader, and a LLaMA bias correction
 * cannot be exported packed. */
static void test_refusals(void)
{
    const char *dir = tmpdir();
    char pk[128], bad[128], line[512];
    snprintf(pk, sizeof pk, "%s/gpt2", dir);
    snprintf(bad, sizeof bad, "%s/bad", dir);
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    qs_ctx_init(&c, b);
    c.emit = quiet;
    c.note = quiet_note;
    CHECK(run(&c, "load model datasets/models/tiny-gpt2") == 0);
    CHECK(run(&c, "quant * int4 gran=group:32") == 0);
    snprintf(line, sizeof line, "export model %s packed", pk);
    CHECK(run(&c, line) == 0);
    qs_ctx_free(&c);
    qs_bench_free(b);
    qs_err e = {{0}};
    char path[256], cfg[256], cfg2[256];
    snprintf(path, sizeof path, "%s/model.safetensors", pk);
    snprintf(cfg, sizeof cfg, "%s/config.json", pk);
    snprintf(cfg2, sizeof cfg2, "%s/config.json", bad);
    mkdir(bad, 0777);
    CHECK(link(cfg, cfg2) == 0);
    struct qs_st_file *f = NULL;
    CHECK(qs_st_open(path, &f, &e) == 0);
    if (!f)
        return;
    int n = qs_st_count(f), nm = qs_st_meta_count(f);
    struct qs_st_out *t = calloc((size_t)n + 1, sizeof *t);
    const char **keys = calloc((size_t)nm + 1, sizeof *keys),
               **vals = calloc((size_t)nm + 1, sizeof *vals);
    for (int i = 0; i < nm; i++) {
        keys[i] = qs_st_meta_key(f, i);
        vals[i] = qs_st_meta_value(f, i);
    }
    const char *victim = "transformer.h.1.mlp.c_fc.weight.scales";
    for (int mode = 0; mode < 2; mode++) {
        for (int i = 0; i < n; i++) {
            const struct qs_st_tensor *s = qs_st_get(f, i);
            t[i] = (struct qs_st_out){
                .name = s->name, .dtype = s->dtype, .ndim = s->ndim, .data = s->data};
            memcpy(t[i].shape, s->shape, sizeof t[i].shape);
            if (mode == 0 && !strcmp(s->name, victim))
                t[i].shape[0]--; /* one byte short */
        }
        int nt = n;
        static const uint8_t junk[4];
        if (mode == 1) /* a tensor nothing reads */
            t[nt++] = (struct qs_st_out){.name = "transformer.h.0.mlp.c_fc.weight.extra",
                                         .dtype = QS_DT_U8,
                                         .ndim = 1,
                                         .shape = {4},
                                         .data = junk};
        snprintf(line, sizeof line, "%s/model.safetensors", bad);
        CHECK(qs_st_write(line, t, nt, keys, vals, nm, &e) == 0);
        struct qs_lm *m = NULL;
        qs_err e2 = {{0}};
        CHECK(qs_lm_load(bad, &m, &e2) < 0 && m == NULL);
        fprintf(stderr, "  damaged (%d): %s\n", mode, e2.msg);
        CHECK(strstr(e2.msg, "bad/model.safetensors") != NULL);
        if (mode == 0)
            CHECK(strstr(e2.msg, victim) && strstr(e2.msg, "must be U8 ["));
        else
            CHECK(strstr(e2.msg, "weight.extra") && strstr(e2.msg, "is not used"));
    }
    free(t);
    free(keys);
    free(vals);
    qs_st_close(f);
    rmdir_model(bad);
    rmdir_model(pk);

    b = qs_bench_new();
    qs_ctx_init(&c, b);
    c.emit = quiet;
    c.note = quiet_note;
    CHECK(load(&c, "datasets/models/tiny-llama") == 0);
    CHECK(run(&c, "quant * int4") == 0);
    CHECK(run(&c, "correct model.layers.0.mlp.up_proj bias") == 0);
    snprintf(line, sizeof line, "export model %s/llama-bias packed", dir);
    CHECK(qs_exec_line(&c, line, &e) < 0);
    CHECK(strstr(e.msg, "up_proj has no bias to fold its bias correction into") != NULL);
    snprintf(line, sizeof line, "%s/llama-bias", dir);
    CHECK(access(line, F_OK) != 0);
    qs_ctx_free(&c);
    qs_bench_free(b);
}

int main(void)
{
    const struct qs_test_case cases[] = {
        TEST_CASE(test_export_packed_reload),
        TEST_CASE(test_float_sites_and_formats),
        TEST_CASE(test_refusals),
    };
    int rc = qs_test_run("lm_packed", cases, (int)(sizeof cases / sizeof cases[0]));
    if (tmp_[0]) {
        unlink(text_);
        rmdir(tmp_);
    }
    return rc;
}
