/* test_study_record.c - per-setting study records (study_record.h) and the shared aggregation:
 * a record gives back every double bit for bit (NaN, infinities, -0, subnormals included), and a
 * study rebuilt from one record per setting, each setting run in a process of its own as a plan's
 * job would, aggregates (qs_q1_aggregate) to exactly the in-process figures. Records that are cut
 * short, edited (a verdict that does not follow from the figures) or written under other options
 * are refused. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/study.h"
#include "qscope/study_record.h"
#include "test.h"

static char tmpdir[64];

static const char *tmp(const char *name)
{
    static char p[200];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/qscope-record-XXXXXX");
        if (!mkdtemp(tmpdir))
            tmpdir[0] = 0;
    }
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

static int same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static void opts_default(struct qs_q1_opts *o, struct qs_format *lf, struct qs_qopts *lo)
{
    qs_err e = {{0}};
    memset(o, 0, sizeof *o);
    CHECK(qs_format_parse("int3", &o->fmt, &e) == 0);
    qs_qopts_default(&o->opt);
    CHECK(qs_format_parse("int4", lf, &e) == 0);
    qs_qopts_default(lo);
    lo->gran = QS_GRAN_CHANNEL;
    o->lm_fmt = lf;
    o->lm_opt = lo;
    snprintf(o->prec, sizeof o->prec, "int4");
    o->top_frac = 0.1;
}

static void test_roundtrip_bits(void)
{
    static const double vals[] = {0.1, 1.0 / 3.0, -0.0,      5e-324, 1.7976931348623157e308,
                                  NAN, INFINITY,  -INFINITY, -0.069, 0.348};
    enum { NV = sizeof vals / sizeof *vals };
    struct qs_q1 q;
    memset(&q, 0, sizeof q);
    q.nsettings = 1;
    q.nlayers = NV;
    q.settings = calloc(1, sizeof *q.settings);
    q.layers = calloc(NV, sizeof *q.layers);
    struct qs_q1_setting *st = &q.settings[0];
    snprintf(st->model, sizeof st->model, "dir with \"quotes\"/m\\odel");
    snprintf(st->data, sizeof st->data, "d.txt");
    st->seed = 2147483647;
    st->nlayers = NV;
    st->nq1 = NV - 1;
    st->lm = 1;
    snprintf(st->arch, sizeof st->arch, "gpt2");
    snprintf(st->format, sizeof st->format, "int4");
    snprintf(st->options, sizeof st->options, "gran=channel");
    st->float_acc = NAN;
    st->quant_acc = -0.0;
    st->bits_per_weight = 4.0 + 1.0 / 7.0;
    st->gate_pass = 1;
    st->med_r_float = 0.1;
    st->med_r_q = -0.069;
    st->spearman = -1.0 / 3.0;
    st->verdict = qs_q1_verdict(st->med_r_q, st->spearman);
    for (int i = 0; i < NV; i++) {
        struct qs_q1_layer *l = &q.layers[i];
        l->index = i;
        snprintf(l->name, sizeof l->name, "h.%d.attn.c_attn", i);
        l->kind = i == NV - 1 ? QS_Q1_SITE : (enum qs_q1_kind)(1 + i % 2);
        l->nsites = 1 + i % 3;
        l->block = i;
        l->third = i % 3;
        l->d = 64 + i;
        l->in = 32;
        l->w_rel_err = vals[i];
        l->preact_rel_mse = vals[(i + 1) % NV];
        l->correctability = vals[(i + 2) % NV];
        l->r_float = vals[(i + 3) % NV];
        l->r_q = vals[(i + 4) % NV];
        l->lambda = vals[(i + 5) % NV];
        l->rank_kept = i * 7;
    }
    struct qs_q1_opts o;
    struct qs_format lf;
    struct qs_qopts lo;
    opts_default(&o, &lf, &lo);
    char line[600];
    qs_q1_record_options(&o, line, sizeof line);
    qs_err e = {{0}};
    CHECK(qs_q1_record_write(&q, &o, tmp("a.json"), &e) == 0);
    struct qs_q1 r;
    memset(&r, 0, sizeof r);
    CHECK(qs_q1_record_read(tmp("a.json"), line, &r, &e) == 0);
    CHECK(r.nsettings == 1 && r.nlayers == NV);
    if (r.nsettings == 1 && r.nlayers == NV) {
        const struct qs_q1_setting *s2 = &r.settings[0];
        CHECK_STR(s2->model, st->model);
        CHECK(s2->seed == st->seed && s2->nq1 == st->nq1 && s2->lm == 1 && s2->first == 0);
        CHECK(same_bits(s2->float_acc, st->float_acc) && same_bits(s2->quant_acc, -0.0));
        CHECK(same_bits(s2->bits_per_weight, st->bits_per_weight));
        CHECK(same_bits(s2->spearman, st->spearman) && s2->verdict == st->verdict);
        for (int i = 0; i < NV; i++) {
            const struct qs_q1_layer *a = &q.layers[i], *b = &r.layers[i];
            CHECK(same_bits(a->w_rel_err, b->w_rel_err) &&
                  same_bits(a->preact_rel_mse, b->preact_rel_mse) &&
                  same_bits(a->correctability, b->correctability) &&
                  same_bits(a->r_float, b->r_float) && same_bits(a->r_q, b->r_q) &&
                  same_bits(a->lambda, b->lambda));
            CHECK(a->kind == b->kind && a->nsites == b->nsites && a->third == b->third &&
                  a->d == b->d && a->rank_kept == b->rank_kept && b->setting == 0);
            CHECK_STR(a->name, b->name);
        }
    }
    /* a second read appends, with its rows pointing at the new setting */
    CHECK(qs_q1_record_read(tmp("a.json"), NULL, &r, &e) == 0);
    CHECK(r.nsettings == 2 && r.nlayers == 2 * NV && r.settings[1].first == NV &&
          r.layers[NV].setting == 1);
    /* refusals leave q as it was */
    CHECK(qs_q1_record_read(tmp("none.json"), NULL, &r, &e) == 1);
    CHECK(qs_q1_record_read(tmp("a.json"), "format=int8", &r, &e) < 0 &&
          strstr(e.msg, "other options"));
    FILE *f = fopen(tmp("a.json"), "r");
    char buf[1 << 16];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    char *cut = strstr(buf, "\"complete\"");
    CHECK(cut != NULL);
    if (cut) {
        FILE *g = fopen(tmp("cut.json"), "w");
        fwrite(buf, 1, (size_t)(cut - buf), g);
        fclose(g);
        CHECK(qs_q1_record_read(tmp("cut.json"), NULL, &r, &e) < 0);
        g = fopen(tmp("false.json"), "w");
        fprintf(g, "%.*s\"complete\": false\n}\n", (int)(cut - buf), buf);
        fclose(g);
        CHECK(qs_q1_record_read(tmp("false.json"), NULL, &r, &e) < 0 &&
              strstr(e.msg, "incomplete"));
    }
    char *v = strstr(buf, "\"refuted\"");
    CHECK(v != NULL);
    if (v) {
        memcpy(v, "\"unclear\"", 9);
        FILE *g = fopen(tmp("edited.json"), "w");
        fputs(buf, g);
        fclose(g);
        CHECK(qs_q1_record_read(tmp("edited.json"), NULL, &r, &e) < 0);
    }
    CHECK(r.nsettings == 2 && r.nlayers == 2 * NV);
    qs_q1_free(&q);
    qs_q1_free(&r);
}

static int same_stats(const struct qs_q1_stats *a, const struct qs_q1_stats *b)
{
    return a->n == b->n && same_bits(a->mean, b->mean) && same_bits(a->median, b->median) &&
           same_bits(a->pos_frac, b->pos_frac) && same_bits(a->frac_gt_02, b->frac_gt_02);
}

/* The in-process study against one record per setting, each setting run on its own. */
static void test_merge_equals_in_process(void)
{
    const char *models[] = {"datasets/models/moons-mlp.safetensors",
                            "datasets/models/digits-mlp.safetensors"};
    const uint64_t seeds[] = {0, 1};
    struct qs_q1_opts o;
    struct qs_format lf;
    struct qs_qopts lo;
    opts_default(&o, &lf, &lo);
    o.models = models;
    o.nmodels = 2;
    o.seeds = seeds;
    o.nseeds = 2;
    qs_err e = {{0}};
    struct qs_q1 all;
    CHECK(qs_study_q1(&o, &all, &e) == 0);
    if (all.nsettings != 4)
        return;
    char line[600];
    qs_q1_record_options(&o, line, sizeof line);
    struct qs_q1 m;
    memset(&m, 0, sizeof m);
    for (int mi = 0; mi < 2; mi++)
        for (int si = 0; si < 2; si++) {
            struct qs_q1_opts one = o;
            one.models = &models[mi];
            one.nmodels = 1;
            one.seeds = &seeds[si];
            one.nseeds = 1;
            struct qs_q1 q1;
            char name[32];
            snprintf(name, sizeof name, "s%d%d.json", mi, si);
            CHECK(qs_study_q1(&one, &q1, &e) == 0);
            CHECK(qs_q1_record_write(&q1, &one, tmp(name), &e) == 0);
            qs_q1_free(&q1);
            CHECK(qs_q1_record_read(tmp(name), line, &m, &e) == 0);
        }
    CHECK(qs_q1_aggregate(&m, &e) == 0);
    CHECK(m.nsettings == 4 && m.nlayers == all.nlayers);
    CHECK(same_stats(&m.r_float, &all.r_float) && same_stats(&m.r_q, &all.r_q));
    for (int k = 0; k < 3; k++)
        CHECK(same_bits(m.depth_q[k], all.depth_q[k]) &&
              same_bits(m.depth_float[k], all.depth_float[k]) && m.depth_n[k] == all.depth_n[k]);
    for (int k = 0; k < 2; k++)
        CHECK(same_stats(&m.sub_q[k], &all.sub_q[k]) &&
              same_stats(&m.sub_float[k], &all.sub_float[k]));
    CHECK(same_bits(m.pooled_spearman, all.pooled_spearman) &&
          same_bits(m.pooled_spearman_float, all.pooled_spearman_float));
    CHECK(m.nsupported == all.nsupported && m.nrefuted == all.nrefuted &&
          m.nunclear == all.nunclear && m.nexcluded == all.nexcluded);
    for (int s = 0; s < 4 && m.nsettings == 4; s++)
        CHECK(m.settings[s].verdict == all.settings[s].verdict &&
              same_bits(m.settings[s].spearman, all.settings[s].spearman) &&
              same_bits(m.settings[s].med_r_q, all.settings[s].med_r_q));
    /* and the aggregation is not vacuous: the figures differ from a study missing a setting */
    struct qs_q1 part = m;
    part.nsettings = 3;
    part.nlayers = m.settings[3].first;
    CHECK(qs_q1_aggregate(&part, &e) == 0);
    CHECK(!same_stats(&part.r_q, &all.r_q));
    qs_q1_free(&all);
    qs_q1_free(&m);
}

static int cleanup(void)
{
    if (tmpdir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", tmpdir);
            return -1;
        }
    }
    return 0;
}

TEST_MAIN_CLEANUP("study_record", cleanup, TEST_CASE(test_roundtrip_bits),
                  TEST_CASE(test_merge_equals_in_process))
