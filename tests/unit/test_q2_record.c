/* test_q2_record.c - Q2 per-setting records (study_record.h) and the one Q2 aggregation: a
 * record gives back every double bit for bit (NaN, infinities, -0, subnormals included), and a
 * study rebuilt from one record per setting, each setting run on its own as a plan's job runs
 * it, aggregates (qs_q2_aggregate) to exactly the in-process figures. Records that are cut
 * short, edited (a figure changed: the SHA-256 digest; a verdict that does not follow from the
 * figures), of another study or written under other options are refused, and say why. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/q2.h"
#include "qscope/study_record.h"
#include "test.h"

static char tmpdir[64];

static const char *tmp(const char *name)
{
    static char ring[4][200]; /* two at a time in one call */
    static int k;
    char *p = ring[k++ % 4];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/qscope-q2rec-XXXXXX");
        if (!mkdtemp(tmpdir))
            tmpdir[0] = 0;
    }
    snprintf(p, sizeof ring[0], "%s/%s", tmpdir, name);
    return p;
}

static int same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static void opts(struct qs_q2_opts *o, struct qs_format *lf, struct qs_qopts *lo)
{
    qs_err e = {{0}};
    qs_q2_opts_default(o);
    CHECK(qs_format_parse("int3", &o->fmt, &e) == 0);
    qs_qopts_default(&o->opt);
    CHECK(qs_format_parse("int4", lf, &e) == 0);
    qs_qopts_default(lo);
    lo->gran = QS_GRAN_CHANNEL;
    o->lm_fmt = lf;
    o->lm_opt = lo;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = 0;
    return buf;
}

static void spit(const char *path, const char *text, size_t n)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fwrite(text, 1, n, f);
        fclose(f);
    }
}

/* The record at src with the first value after KEY replaced by VAL, written to dst. */
static void edit(const char *src, const char *dst, const char *key, const char *val)
{
    char *s = slurp(src);
    CHECK(s != NULL);
    if (!s)
        return;
    char *k = strstr(s, key);
    CHECK(k != NULL);
    if (k) {
        char *v = k + strlen(key);
        while (*v == ':' || *v == ' ' || *v == '\t')
            v++;
        char *end = v + strcspn(v, ",\n");
        FILE *f = fopen(dst, "w");
        fwrite(s, 1, (size_t)(v - s), f);
        fputs(val, f);
        fputs(end, f);
        fclose(f);
    }
    free(s);
}

static void test_roundtrip_bits(void)
{
    static const double vals[] = {0.1,    1.0 / 3.0, -0.0,      5e-324, 1.7976931348623157e308,
                                  NAN,    INFINITY,  -INFINITY, -0.069, 0.348,
                                  2.5e-17};
    enum { NV = sizeof vals / sizeof *vals };
    struct qs_q2_setting s;
    memset(&s, 0, sizeof s);
    snprintf(s.model, sizeof s.model, "dir with \"quotes\"/m\\odel");
    snprintf(s.data, sizeof s.data, "d.txt");
    s.seed = 2147483647;
    snprintf(s.arch, sizeof s.arch, "gpt2");
    snprintf(s.format, sizeof s.format, "int4");
    snprintf(s.options, sizeof s.options, "gran=channel");
    s.lm = 1;
    s.nsites = 2;
    s.gate_pass = 1;
    s.float_loss = vals[0];
    s.quant_loss = vals[1];
    s.float_acc = NAN;
    s.quant_acc = -0.0;
    s.bits_per_weight = 4.0 + 1.0 / 7.0;
    s.n_fit = 4095;
    s.n_eval = 4093;
    s.mse_none = vals[3];
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        s.mse[v] = 0.01 * (v + 1) / 3.0;
        s.fit_loss[v] = vals[4 + v];
        s.loss_corr[v] = vals[(7 + v) % NV];
        s.loss_gain[v] = v == 1 ? -1e-3 / 7 : 0.02 / 3;
    }
    s.improvement = (s.mse[0] - s.mse[1]) / s.mse[0];
    s.unstable = 2;
    s.verdict = qs_q2_verdict(s.mse[0], s.mse[1], s.loss_gain);
    s.sites = calloc(2, sizeof *s.sites);
    for (int i = 0; i < 2; i++) {
        struct qs_q2_site *x = &s.sites[i];
        snprintf(x->name, sizeof x->name, "h.%d.attn.c_attn", i);
        x->index = i;
        x->kind = 3 * i;
        x->in = 64;
        x->out = 192 + i;
        x->rms = 1.0 / (3 + i);
        for (int k = 0; k < QS_Q2_NFEAT; k++)
            x->feat[k] = vals[(i + k) % NV];
        x->mse_none = vals[(i + 5) % NV];
        for (int v = 0; v < QS_Q2_NVAR; v++)
            x->mse[v] = vals[(i + v + 8) % NV];
    }
    struct qs_q2_opts o;
    struct qs_format lf;
    struct qs_qopts lo;
    opts(&o, &lf, &lo);
    char line[600];
    qs_q2_record_options(&o, line, sizeof line);
    qs_err e = {{0}};
    CHECK(qs_q2_record_write(&s, 1, &o, tmp("a.json"), &e) == 0);
    struct qs_q2 r;
    memset(&r, 0, sizeof r);
    CHECK(qs_q2_record_read(tmp("a.json"), line, &r, &e) == 0);
    CHECK(r.nsettings == 1);
    if (r.nsettings == 1) {
        const struct qs_q2_setting *b = &r.settings[0];
        CHECK_STR(b->model, s.model);
        CHECK_STR(b->options, s.options);
        CHECK(b->seed == s.seed && b->lm == 1 && b->nsites == 2 && b->gate_pass == 1 &&
              b->n_fit == 4095 && b->n_eval == 4093 && b->unstable == 2);
        CHECK(b->verdict == s.verdict);
        CHECK(same_bits(b->float_loss, s.float_loss) && same_bits(b->quant_loss, s.quant_loss) &&
              same_bits(b->float_acc, s.float_acc) && same_bits(b->quant_acc, -0.0) &&
              same_bits(b->bits_per_weight, s.bits_per_weight) &&
              same_bits(b->mse_none, s.mse_none) && same_bits(b->improvement, s.improvement));
        for (int v = 0; v < QS_Q2_NVAR; v++)
            CHECK(same_bits(b->mse[v], s.mse[v]) && same_bits(b->fit_loss[v], s.fit_loss[v]) &&
                  same_bits(b->loss_corr[v], s.loss_corr[v]) &&
                  same_bits(b->loss_gain[v], s.loss_gain[v]));
        for (int i = 0; i < 2; i++) {
            const struct qs_q2_site *x = &s.sites[i], *y = &b->sites[i];
            CHECK_STR(x->name, y->name);
            CHECK(x->index == y->index && x->kind == y->kind && x->in == y->in && x->out == y->out);
            CHECK(same_bits(x->rms, y->rms) && same_bits(x->mse_none, y->mse_none));
            for (int k = 0; k < QS_Q2_NFEAT; k++)
                CHECK(same_bits(x->feat[k], y->feat[k]));
            for (int v = 0; v < QS_Q2_NVAR; v++)
                CHECK(same_bits(x->mse[v], y->mse[v]));
        }
    }
    /* a second read appends */
    CHECK(qs_q2_record_read(tmp("a.json"), NULL, &r, &e) == 0 && r.nsettings == 2);
    /* refusals leave q as it was, and say why */
    CHECK(qs_q2_record_read(tmp("none.json"), NULL, &r, &e) == 1);
    struct qs_q2_opts o2 = o;
    o2.epochs = 3;
    char line2[600];
    qs_q2_record_options(&o2, line2, sizeof line2);
    CHECK(qs_q2_record_read(tmp("a.json"), line2, &r, &e) < 0 &&
          strstr(e.msg, "other options (epochs=8 where the plan has epochs=3;"));
    o2 = o; /* a held-out budget is an option too: a record of the whole split is not its */
    o2.heldout_tokens = 4096;
    qs_q2_record_options(&o2, line2, sizeof line2);
    CHECK(qs_q2_record_read(tmp("a.json"), line2, &r, &e) < 0 && strstr(e.msg, "other options"));
    /* the digest is over the values, not their text: 1/3 written otherwise still reads */
    edit(tmp("a.json"), tmp("same.json"), "\"rms\"", "3.33333333333333315e-1");
    CHECK(qs_q2_record_read(tmp("same.json"), line, &r, &e) == 0 && r.nsettings == 3);
    edit(tmp("a.json"), tmp("rms.json"), "\"rms\"", "0.33333333333333337"); /* one ulp off */
    CHECK(qs_q2_record_read(tmp("rms.json"), NULL, &r, &e) < 0 &&
          strstr(e.msg, "setting 0 is edited after it was written: its sha256 does not match"));
    edit(tmp("a.json"), tmp("feat.json"), "\"in_rms\"", "1");
    CHECK(qs_q2_record_read(tmp("feat.json"), NULL, &r, &e) < 0 && strstr(e.msg, "sha256"));
    edit(tmp("a.json"), tmp("v.json"), "\"verdict\"",
         strcmp(s.verdict, "supported") ? "\"supported\"" : "\"unclear\"");
    CHECK(qs_q2_record_read(tmp("v.json"), NULL, &r, &e) < 0 &&
          strstr(e.msg, "its verdict does not follow from its figures"));
    edit(tmp("a.json"), tmp("st.json"), "\"study\"", "\"q1\"");
    CHECK(qs_q2_record_read(tmp("st.json"), NULL, &r, &e) < 0 &&
          strstr(e.msg, "not a qscope q2 record"));
    char *text = slurp(tmp("a.json"));
    CHECK(text != NULL);
    if (text) {
        char *cut = strstr(text, "\"complete\"");
        CHECK(cut != NULL);
        if (cut) {
            spit(tmp("cut.json"), text, (size_t)(cut - text));
            CHECK(qs_q2_record_read(tmp("cut.json"), NULL, &r, &e) < 0 &&
                  strstr(e.msg, "cut short"));
        }
        free(text);
    }
    /* the unedited record still reads (the edits went to other files) */
    CHECK(r.nsettings == 3 && qs_q2_record_read(tmp("a.json"), line, &r, &e) == 0 &&
          r.nsettings == 4);
    qs_q2_setting_clear(&s);
    qs_q2_free(&r);
}

static int same_sum(const struct qs_q2_summary *a, const struct qs_q2_summary *b)
{
    int ok = a->nsettings == b->nsettings && a->nsupported == b->nsupported &&
             a->nrefuted == b->nrefuted && a->nunclear == b->nunclear &&
             a->nexcluded == b->nexcluded && a->nunstable == b->nunstable && a->nlm == b->nlm &&
             same_bits(a->impr_mean, b->impr_mean) && same_bits(a->impr_min, b->impr_min) &&
             same_bits(a->impr_max, b->impr_max) && same_bits(a->mse_none_mean, b->mse_none_mean);
    for (int v = 0; v < QS_Q2_NVAR; v++)
        ok = ok && same_bits(a->gain_mean[v], b->gain_mean[v]) &&
             same_bits(a->mse_mean[v], b->mse_mean[v]) && a->unstable_var[v] == b->unstable_var[v];
    return ok;
}

/* The in-process study against one record per setting, each setting run on its own. */
static void test_merge_equals_in_process(void)
{
    const char *models[] = {"datasets/models/digits-mlp.safetensors",
                            "datasets/models/circles-mlp.safetensors"};
    const uint64_t seeds[] = {0, 1};
    struct qs_q2_opts o;
    struct qs_format lf;
    struct qs_qopts lo;
    opts(&o, &lf, &lo);
    o.n_fit = o.n_eval = 2048;
    o.epochs = 2;
    o.models = models;
    o.nmodels = 2;
    o.seeds = seeds;
    o.nseeds = 2;
    qs_err e = {{0}};
    struct qs_q2 all;
    CHECK(qs_study_q2(&o, &all, &e) == 0);
    if (all.nsettings != 4)
        return;
    char line[600];
    qs_q2_record_options(&o, line, sizeof line);
    struct qs_q2 m;
    memset(&m, 0, sizeof m);
    for (int mi = 0; mi < 2; mi++)
        for (int si = 0; si < 2; si++) {
            struct qs_q2_opts one = o;
            one.models = &models[mi];
            one.nmodels = 1;
            one.seeds = &seeds[si];
            one.nseeds = 1;
            struct qs_q2 q1;
            char name[32];
            snprintf(name, sizeof name, "s%d%d.json", mi, si);
            CHECK(qs_study_q2(&one, &q1, &e) == 0);
            CHECK(qs_q2_record_write(q1.settings, q1.nsettings, &one, tmp(name), &e) == 0);
            qs_q2_free(&q1);
            CHECK(qs_q2_record_read(tmp(name), line, &m, &e) == 0);
        }
    qs_q2_aggregate(&m);
    CHECK(m.nsettings == 4);
    CHECK(same_sum(&m.sum, &all.sum));
    for (int s = 0; s < 4 && m.nsettings == 4; s++) {
        const struct qs_q2_setting *a = &all.settings[s], *b = &m.settings[s];
        CHECK(a->verdict == b->verdict && same_bits(a->improvement, b->improvement) &&
              same_bits(a->quant_loss, b->quant_loss) && a->nsites == b->nsites);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            CHECK(same_bits(a->mse[v], b->mse[v]) && same_bits(a->loss_gain[v], b->loss_gain[v]));
        for (int i = 0; i < a->nsites && i < b->nsites; i++)
            CHECK(same_bits(a->sites[i].mse[QS_Q2_FEAT], b->sites[i].mse[QS_Q2_FEAT]) &&
                  same_bits(a->sites[i].feat[3], b->sites[i].feat[3]));
    }
    /* and the aggregation is not vacuous: a study missing a setting gives other figures */
    struct qs_q2 part = m;
    part.nsettings = 3;
    qs_q2_aggregate(&part);
    CHECK(!same_sum(&part.sum, &all.sum) && !same_bits(part.sum.impr_mean, all.sum.impr_mean));
    qs_q2_free(&all);
    qs_q2_free(&m);
}

/* Not a counted test: run after the cases (TEST_MAIN_CLEANUP); a failed rm exits 1. */
static int cleanup(void)
{
    if (!tmpdir[0])
        return 0;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

TEST_MAIN_CLEANUP("q2_record", cleanup, TEST_CASE(test_roundtrip_bits),
                  TEST_CASE(test_merge_equals_in_process))
