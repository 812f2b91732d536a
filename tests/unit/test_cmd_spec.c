/* test_cmd_spec.c - the commands' typed argument specs (issue 17, item 1): every row's spec is
 * well formed, the dispatcher refuses a bad word by name before the handler runs (and the
 * bench is left as it was), the usage line is generated from the spec, and completion offers
 * what the kinds say (layer names for LAYER/PATTERN, format names for FORMAT, enum values,
 * file names for PATH). No model is loaded: argument checks come before "no model loaded". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/cmd.h"
#include "qscope/format.h"
#include "test.h"

static int kind_ok(enum qs_arg_kind k)
{
    return k >= QS_ARG_WORD && k <= QS_ARG_INTS;
}

/* Every row: arity consistent with its positionals, enum values given, option names unique. */
static void test_specs_well_formed(void)
{
    struct qs_ctx c;
    qs_ctx_init(&c, NULL);
    const struct qs_cmd_def *d;
    int n = 0;
    for (int i = 0; (d = qs_cmd_at(&c, i)); i++, n++) {
        int np = 0;
        for (const struct qs_arg *a = d->spec; a && a->name; a++) {
            CHECK(kind_ok(a->kind));
            np += a->pos;
            if (a->kind == QS_ARG_ENUM || a->kind == QS_ARG_ENUMS)
                CHECK(a->values && a->values[0]);
            CHECK(!a->pos || a->kind != QS_ARG_FLAG);
            for (const struct qs_arg *b = a + 1; !a->pos && b->name; b++)
                if (!b->pos && !strcmp(a->name, b->name)) {
                    fprintf(stderr, "  %s: option %s twice\n", d->name, a->name);
                    CHECK(0);
                }
        }
        CHECK(d->amin >= 0 && d->amin <= np);
        CHECK(d->amax < 0 || (d->amax >= d->amin && (np == 0 || d->amax >= np)));
        CHECK(d->amax != 0 || np == 0);
    }
    CHECK(n >= 35); /* the core table alone (no front end) */
}

static int exec(struct qs_ctx *c, const char *line, char *msg, size_t n)
{
    qs_err e = {{0}};
    int rc = qs_exec_line(c, line, &e);
    snprintf(msg, n, "%s", e.msg);
    return rc;
}

/* A bad value is refused by name, for several commands and kinds. */
static void test_bad_values_named(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    qs_ctx_init(&c, b);
    static const struct {
        const char *line, *msg;
    } bad[] = {
        {"spectrum fc1 k=abc", "spectrum k: 'abc' is not an integer"},
        {"spectrum fc1 of=input", "spectrum: of=input: expected weight or preact"},
        {"rank scale=diag", "rank: scale=diag: expected none, act or cov"},
        {"error kl=maybe", "error: kl=maybe: expected auto, on or off"},
        {"correct fc1 lora", "correct: 'lora': expected bias, lowrank, lqer, qera, eora, linear or "
                             "clocal"},
        {"correct fc1 lowrank lambda=big", "correct lambda: 'big' is not a number"},
        {"quant * int4 gran=row", "quant: gran=row: expected tensor, channel or group:N"},
        {"quant * int4 smooth=lots", "quant smooth: 'lots' is not a number"},
        {"set seed forty", "set seed: 'forty' is not an integer"},
        {"set bail maybe", "set bail: 'maybe': expected on or off"},
        {"regime half", "regime: 'half': expected weight, act or full"},
        {"sensitivity method=delta,hessian",
         "sensitivity: method=delta,hessian: 'hessian': expected delta, grad, fisher, hutchinson "
         "or all (a comma list)"},
        {"qat mode=fast", "qat: mode=fast: expected whole or block"},
        {"study q1 gran=row", "study q1: gran=row: expected tensor, channel, group:N or block"},
        {"study q2 gran=g32", "study q2: gran=g32: expected tensor, channel, group:N or block"},
        {"study q1 prec=int2", "study q1: prec=int2: expected int4, int8 or float"},
        {"study q2 fit=many", "study q2 fit: 'many' is not an integer"},
        {"allocate bits=3 gran=rows", "allocate: gran=rows: expected tensor, channel or group:N"},
        {"allocate bits=4 methods=rtn,foo",
         "allocate: methods=rtn,foo: 'foo': expected rtn, gptq, awq or imatrix (a comma list)"},
        {"allocate bits=4 corr=svd", "allocate: corr=svd: expected lowrank, lqer, qera or eora"},
        {"allocate rank=4 method=bias",
         "allocate: method=bias: expected lowrank, lqer, qera or eora"},
        {"allocate bits=4 corr=lqer ranks=4,x",
         "allocate ranks: 'x' is not an integer (ranks=4,x: a comma list of integers)"},
        {"train epochs=1.5", "train epochs: '1.5' is not an integer"},
        {"roundtrip int4 1 two", "roundtrip: 'two' is not a number"},
        /* a list of integers: every item checked, an empty one included */
        {"train hidden=8,x", "train hidden: 'x' is not an integer (hidden=8,x: a comma list of "
                             "integers)"},
        {"train hidden=64,,64", "train hidden: '' is not an integer (hidden=64,,64: a comma list "
                                "of integers)"},
        {"train hidden=", "train hidden: '' is not an integer (hidden=: a comma list of integers)"},
        /* a number no option means: refused by the spec, not by each handler */
        {"set split train=inf", "set split train: 'inf' is not a finite number"},
        /* a journal number or the words recover takes */
        {"recover sometime", "recover: 'sometime' is not an integer"},
        {"recover discard every", "recover: 'every' is not an integer"},
        {"quant * int4 damp=nan", "quant damp: 'nan' is not a finite number"},
    };
    char msg[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(exec(&c, bad[i].line, msg, sizeof msg) < 0);
        if (strcmp(msg, bad[i].msg)) {
            fprintf(stderr, "  %s\n    got:  %s\n    want: %s\n", bad[i].line, msg, bad[i].msg);
            CHECK(0);
        }
    }
    CHECK(c.njournal == 0);
    /* well-typed words pass the spec and reach the handler (which needs a model) */
    CHECK(exec(&c, "quant * int4 gran=group:32 clip=pct:99.9 smooth=none seed=3", msg, sizeof msg) <
          0);
    CHECK(strstr(msg, "no model loaded") != NULL);
    CHECK(exec(&c, "sensitivity method=delta,grad probes=8", msg, sizeof msg) < 0);
    CHECK(strstr(msg, "no model loaded") != NULL);
    /* a study's gran=group:N passes the spec; its N is the handler's to check */
    CHECK(exec(&c, "study q1 gran=group:0 plan=", msg, sizeof msg) < 0);
    CHECK(strstr(msg, "plan= is empty") != NULL);
    CHECK(exec(&c, "train hidden=16,-3,8", msg, sizeof msg) < 0); /* the range is the handler's */
    CHECK(strstr(msg, "no data loaded") != NULL);
    qs_ctx_free(&c);
    qs_bench_free(b);
}

/* An unknown option, a stray word and a missing positional: refused with the generated usage. */
static void test_unknown_and_arity(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    qs_ctx_init(&c, b);
    char msg[1024];
    CHECK(exec(&c, "spectrum fc1 k=3 top=5", msg, sizeof msg) < 0);
    CHECK_STR(msg, "spectrum: unknown option 'top=5'; usage: spectrum LAYER [of=weight|preact] "
                   "[scale=none|act|cov] [k=N]");
    CHECK(exec(&c, "export model out.safetensors packd", msg, sizeof msg) < 0);
    CHECK_STR(msg, "export model: unexpected argument 'packd'; usage: export model PATH [packed]");
    CHECK(exec(&c, "correct fc1", msg, sizeof msg) < 0);
    CHECK_STR(msg, "correct: missing METHOD; usage: correct LAYER|PATTERN METHOD [r=K] "
                   "[prec=float|FORMAT] [lambda=F] [teacher=PATH]");
    CHECK(exec(&c, "eval now", msg, sizeof msg) < 0);
    CHECK_STR(msg, "eval: unexpected argument 'now'; usage: eval");
    /* quant's usage names every option its row lists (it once lacked range= and scale=) */
    CHECK(exec(&c, "quant * int4 ranges=full", msg, sizeof msg) < 0);
    CHECK(strstr(msg, "unknown option 'ranges=full'") && strstr(msg, "[range=restricted|full]") &&
          strstr(msg, "[scale=f16|f32|none]") && strstr(msg, "[smooth=A|none]"));
    /* a path holding '=' is still a path: the required positionals come first */
    CHECK(exec(&c, "source a=b.qs", msg, sizeof msg) < 0);
    CHECK(strstr(msg, "unknown option") == NULL);
    qs_ctx_free(&c);
    qs_bench_free(b);
}

/* ---- completion ---- */

static char *got[512];
static int ngot;

static void add(void *u, const char *s)
{
    (void)u;
    if (ngot < 512)
        got[ngot++] = strdup(s);
}

static void reset(void)
{
    for (int i = 0; i < ngot; i++)
        free(got[i]);
    ngot = 0;
}

static int has(const char *s)
{
    for (int i = 0; i < ngot; i++)
        if (!strcmp(got[i], s))
            return 1;
    return 0;
}

static const char *layer(void *u, int i)
{
    (void)u;
    static const char *const names[] = {"fc1", "fc2", "fc3"};
    return i < 3 ? names[i] : NULL;
}

/* Completes the last word of line (split on spaces); returns qs_cmd_complete's value. */
static int comp(const char *line, size_t *keylen)
{
    reset();
    char buf[256], *w[16];
    snprintf(buf, sizeof buf, "%s", line);
    int nw = 0;
    for (char *s = NULL, *t = strtok_r(buf, " ", &s); t && nw < 16; t = strtok_r(NULL, " ", &s))
        w[nw++] = t;
    const char *text = "";
    if (line[0] && line[strlen(line) - 1] != ' ')
        text = w[--nw];
    struct qs_ctx c;
    qs_ctx_init(&c, NULL);
    return qs_cmd_complete(&c, w, nw, text, layer, NULL, add, NULL, keylen);
}

static void test_completion_from_kinds(void)
{
    size_t kl;
    CHECK(comp("", &kl) == 0 && has("spectrum") && has("load") && !has("load model"));
    CHECK(comp("load ", &kl) == 0 && has("model") && has("data") && has("reference"));
    /* PATH: file names (readline's), nothing else */
    CHECK(comp("load model ", &kl) == 1 && kl == 0);
    CHECK(comp("source ", &kl) == 1 && kl == 0);
    /* LAYER: layer names, then the options (enum values spelled out, numbers as "k=") */
    CHECK(comp("spectrum ", &kl) == 0 && has("fc2") && !has("of=weight"));
    CHECK(comp("spectrum fc1 ", &kl) == 0 && has("of=weight") && has("of=preact") &&
          has("scale=cov") && has("k=") && !has("fc2"));
    CHECK(comp("spectrum fc1 of=", &kl) == 0 && has("of=weight") && has("of=preact") && ngot == 2);
    /* PATTERN then FORMAT: format names from the format table */
    CHECK(comp("quant ", &kl) == 0 && has("fc3"));
    CHECK(comp("quant fc* ", &kl) == 0 && has("int4") && has("fp8-e4m3") && has("mxfp4") &&
          !has("fc1"));
    CHECK(comp("quant fc* int4 ", &kl) == 0 && has("range=full") && has("scale=f32") &&
          has("asym") && has("gran=group:") && has("damp="));
    /* enum positional and an option's PATH value */
    CHECK(comp("correct fc1 ", &kl) == 0 && has("lowrank") && has("clocal") && !has("int4"));
    CHECK(comp("correct fc1 lowrank prec=", &kl) == 0 && has("prec=float") && has("prec=int8"));
    CHECK(comp("correct fc1 linear teacher=", &kl) == 1 && kl == strlen("teacher="));
    CHECK(comp("regime ", &kl) == 0 && has("weight") && has("full"));
    /* a number or its literal words: the words are offered */
    CHECK(comp("recover ", &kl) == 0 && has("list") && has("discard") && ngot == 2);
    CHECK(comp("recover discard ", &kl) == 0 && has("all") && ngot == 1);
    CHECK(comp("export model m.safetensors ", &kl) == 0 && has("packed"));
    /* a comma list: the next item after those typed */
    CHECK(comp("sensitivity method=delta,", &kl) == 0 && has("method=delta,grad"));
    /* the studies' granularity and precision from their enums */
    CHECK(comp("study q1 gran=", &kl) == 0 && has("gran=tensor") && has("gran=channel") &&
          has("gran=group:") && has("gran=block") && ngot == 4);
    CHECK(comp("study q2 gran=", &kl) == 0 && has("gran=group:") && has("gran=block"));
    CHECK(comp("allocate gran=", &kl) == 0 && has("gran=channel") && !has("gran=block"));
    CHECK(comp("study q1 prec=", &kl) == 0 && has("prec=int8") && has("prec=float"));
    reset();
}

TEST_MAIN("cmd_spec", TEST_CASE(test_specs_well_formed), TEST_CASE(test_bad_values_named),
          TEST_CASE(test_unknown_and_arity), TEST_CASE(test_completion_from_kinds))
