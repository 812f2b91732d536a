/* bench.h - the workbench state: one struct holding the model, the data and its split, the
 * quantization rules and per-layer configurations, corrections, and the activation caches.
 *
 * Caches: the float model's per-layer inputs and pre-activations on the calibration and test
 * splits are computed once per (model, data, split). The quantized path is cached per layer;
 * changing layer i's configuration invalidates layer i onward only (q_valid), so the next query
 * re-runs the forward pass from layer i, reusing everything before it. */
#ifndef QSCOPE_BENCH_H
#define QSCOPE_BENCH_H

#include "qscope/common.h"
#include "qscope/dataset.h"
#include "qscope/format.h"
#include "qscope/lm.h"
#include "qscope/mlp.h"
#include "qscope/tokens.h"

struct qs_rot;

enum qs_regime { QS_REGIME_WEIGHT, QS_REGIME_ACT, QS_REGIME_FULL };
const char *qs_regime_name(enum qs_regime r); /* "weight-only", "activation-only", ... */
const char *qs_regime_word(enum qs_regime r); /* "weight", "act", "full" (command words) */

enum { QS_ROLE_W = 1, QS_ROLE_A = 2 };

/* Activation scale mode for the activation role. */
enum qs_amode { QS_AMODE_DYNAMIC, QS_AMODE_TOKEN, QS_AMODE_STATIC };

/* A rule's quantizer method (methods.h): how the weight is rounded and in which basis the site
 * quantizes. The default (method=rtn, no rotation, no smoothing), which a zeroed struct is, is
 * round-to-nearest as before. */
struct qs_rule_method {
    int method;       /* enum qs_method: QS_METHOD_RTN, _GPTQ, _AWQ, _IMATRIX
                         (weight=imatrix) */
    double damp;      /* GPTQ: damping relative to the mean diagonal of H (> 0; 0 in a
                         zeroed rule means the default 0.01) */
    int act_order;    /* GPTQ order=act: columns by decreasing H_jj */
    int inputs_float; /* inputs=float: statistics from the float model's inputs; default
                         (inputs=quant) from the partly quantized model, sites in order */
    int rotate;       /* rotate=hadamard: randomized Hadamard basis of the input dim */
    int smooth_on;    /* smooth=alpha (SmoothQuant) given */
    double smooth;    /* its alpha in [0, 1] */
    uint64_t seed;    /* rotation seed: the session seed when the rule was made (a site
                         uses seed + its index) */
};
void qs_rule_method_default(struct qs_rule_method *m);
/* Parses one token of `quant` (method=rtn|gptq|awq, damp=X, order=act|col, inputs=float|quant,
 * weight=imatrix|plain, rotate=hadamard|none, smooth=A): 1 when it was one of them, 0 when not
 * (m unchanged), -1 on a bad value (message in e). */
int qs_rule_method_parse_token(struct qs_rule_method *m, const char *tok, qs_err *e);
/* Checks a parsed method against the rule's format and roles (combinations that are refused,
 * with why). 0 or -1. */
int qs_rule_method_check(const struct qs_rule_method *m, const struct qs_format *f, int roles,
                         qs_err *e);
/* Canonical option string of a method, every option of it spelled out ("method=gptq damp=0.01
 * order=col inputs=quant rotate=hadamard"); empty for plain round-to-nearest. */
void qs_rule_method_format(const struct qs_rule_method *m, char *buf, size_t n);
/* What site i's quantized weights were made with, for exports (packfile.h's
 * qscope.weight_methods): "rtn", or qs_rule_method_format's string followed by "seed=N" (the
 * site's rotation seed: the rule's + i) after rotate=hadamard and "alpha=A" (AWQ's choice). */
struct qs_layer_state;
void qs_layer_method_desc(const struct qs_layer_state *s, int i, char *buf, size_t n);
/* Whether m is other than plain round-to-nearest (so the site is quantized by the methods). */
int qs_rule_method_custom(const struct qs_rule_method *m);

struct qs_rule {
    char pattern[64];
    struct qs_format fmt;
    struct qs_qopts opt;
    int roles; /* QS_ROLE_* bits, or 0 = the regime's default roles */
    enum qs_amode amode;
    int matched;                /* layers matched at the last resolution */
    struct qs_rule_method meth; /* the quantizer method (default: round-to-nearest) */
};

enum qs_corr_method {
    QS_CORR_NONE,
    QS_CORR_BIAS,
    QS_CORR_LOWRANK,
    QS_CORR_LQER,
    QS_CORR_QERA,
    QS_CORR_EORA,
    QS_CORR_LINEAR,
    QS_CORR_CLOCAL
};
const char *qs_corr_name(enum qs_corr_method m);
struct qs_corr;
/* Frees a correction's buffers and resets it to method NONE. */
void qs_corr_clear(struct qs_corr *c);
int qs_corr_parse(const char *s, enum qs_corr_method *m, qs_err *e);

/* A fitted correction on one layer. Low-rank methods add c to the dequantized weight;
 * bias adds db to the bias; linear maps the pre-activation: y' = y A^T + mb. clocal is analysis
 * only and never applied to the forward pass. */
struct qs_corr {
    enum qs_corr_method method;
    int rank;              /* low-rank methods */
    char prec[32];         /* "float", "int8", "int4" (linear map's own weights); low-rank:
                              the factors' format ("float", "int8", "fp8-e4m3", ...) */
    double lambda;         /* ridge lambda used */
    int rank_kept;         /* ridge map: eigen-directions of Y_q^T Y_q kept (qs_ridge_map_info) */
    float *c;              /* (out, in) low-rank weight term */
    float *l, *rt;         /* its factors (out, rank), (rank, in): c = l rt (the fit's sgemm),
                              kept so that `export model … packed` writes them */
    float *db;             /* (out) bias term */
    float *amap, *mb;      /* linear map y' = y A^T + mb: A (out, out) row-major, mb (out) */
    long params;           /* parameters the correction adds */
    double bits;           /* bits it adds: params x 32 in float, else the packed bytes x 8 of
                              the quantized weights (linear map) or factors (low-rank) */
    double recovery;       /* held-out R */
    double recovery_calib; /* R on the calibration split */
    int stale;             /* fitted on quantized inputs that have changed since (an earlier
                              layer's configuration or correction changed): refit to update R */
    uint64_t fit_upstream; /* earlier layers (bit j, as qs_bench_run's corr_mask) whose
                              corrections were in place, so active on the quantized path, when
                              this one was fitted: `ablate` judges it in that state */
    /* The last `ablate` of this correction (set by qs_analysis_ablate; a new fit or uncorrect
     * clears it with the rest), kept like the sensitivity so that views need not re-run it:
     * task accuracy (NAN on a transformer) and loss of the float, quantized, quantized+corrected
     * and float+corrected runs, in that order, and the verdict (NULL: not ablated). */
    struct qs_corr_ablated {
        const char *verdict; /* a static string: "recovery", "capacity", ... */
        double acc[4], loss[4];
    } ablated;
};

/* Per-layer resolved configuration plus caches of the quantized weight. */
struct qs_layer_state {
    int rule_w, rule_a;          /* index of the rule setting each role, -1 none */
    struct qs_format wfmt, afmt; /* kind NONE when the role stays float */
    struct qs_qopts wopt, aopt;
    enum qs_amode amode;
    float a_static_amax;     /* calibrated on the float calibration inputs */
    struct qs_packed packed; /* the quantized weight's codes (valid when wquant) */
    int wquant;              /* the weight is quantized: packed holds its codes. The
                                dequantized weight is not kept with the site: qs_site_wq
                                decodes it on use into the bench's weights cache */
    int wq_xform;            /* the decode maps the codes back from the method's basis:
                                Q(W') diag(xs)^-1 H (set by the methods, sitemethod.c) */
    unsigned long wq_gen;    /* the codes' generation, unique in the process: a decoded
                                copy is that of (site, generation) */
    double w_rel_err;        /* ||W - Q(W)|| / ||W|| */
    struct qs_corr corr;     /* method NONE when uncorrected */
    /* the last `sensitivity` of this layer under its current configuration (delta loss when it
     * was computed, else the first of fisher_err, hutch_err, grad_norm); sens_method[0] == 0
     * when unknown; a change of the layer's formats forgets it */
    double sens;
    char sens_method[16];
    /* the site's quantizer method (the weight rule's; an activation-only site takes the
     * rotation or smoothing of its activation rule). A method other than round-to-nearest is
     * computed in forward order by qs_bench_methods_refresh once the calibration data is there;
     * until then mpending is set and wquant 0. packed then holds the codes of the matrix the
     * method quantized (in the rotated / scaled basis) and wq_xform is set: qs_site_wq decodes
     * the effective weight in the original basis (what x wq^T computes), so every analysis
     * reads it unchanged. */
    struct qs_rule_method wm;
    int mpending;
    struct qs_rot *rot; /* rotate=hadamard: x -> H x before activation quantization */
    float *xs;          /* AWQ / SmoothQuant: x -> x / xs (per input channel) */
    double xs_alpha;    /* AWQ: the alpha its grid search chose */
    double xform_bits;  /* bits stored beside the packed weight (xs in F32) */
};

/* Activations of one split along one path (the float model, or the quantized one with its
 * corrections): in[i] = the input of site i (n rows of in_i) for every family. The family's own
 * state for resuming a pass: an MLP's pre[i] = layer i's pre-activation (n, out_i), its in[0]
 * aliases the data x with labels y; a transformer's resid = the residual stream at each block's
 * entry, per window ((n_layer + 1) x ctx x d_model floats a window), pre, x and y NULL. Rows of a
 * transformer's split are its windows' tokens, window after window. */
struct qs_acts {
    int n;
    float **in, **pre;
    float *resid;
    float *x;
    int *y; /* the split's inputs and labels (owned) */
};

enum qs_split_id { QS_CALIB, QS_TEST };

/* `error`'s per-site statistics on a transformer, kept between calls: the streamed sums of
 * sites [0, valid) (QS_ERRSUM doubles a site, errors.c) and each site's KL run (kl_ok). A
 * change at site i (qs_bench_invalidate) drops the sums from i on and the KL run of i. */
struct qs_site_err_cache {
    int nsites, valid;
    double *sum;
    double *kl;
    unsigned char *kl_ok;
};
void qs_site_err_cache_free(struct qs_site_err_cache *c);

/* A transformer's residual stream at block entries over a split's windows, both paths (the
 * calibration's for `error`: qs_bench_stream_pairs; the held-out windows' for eval's runs of the
 * whole quantized path), so a change at a site re-runs both from the kept entry at or before
 * its block instead of from the embeddings. Entries at blocks stride, 2 stride, ... <= n_layer
 * (n_layer: the final norm's input), as many as fit the activation budget beside the pass's own
 * activations; F32, so a resumed pass gives the bits of a whole one. A float entry stays valid
 * until the caches are dropped (model, data, calibration); a quantized entry at block l until a
 * site of a block before l changes (qs_bench_invalidate). */
struct qs_resid_cache {
    int nw, stride, nent;
    int last_from;        /* the block the last pass started from (0: the embeddings) */
    size_t start, td;     /* first token of the windows; ctx * d_model */
    float *f, *q;         /* (nent, nw, td) each */
    unsigned char *ok[2]; /* per entry: written for every window (float, quantized) */
};
void qs_resid_cache_free(struct qs_resid_cache *c);
size_t qs_resid_cache_bytes(const struct qs_resid_cache *c);

typedef void (*qs_progress_fn)(void *ctx, const char *what, double frac);

struct qs_bench {
    struct qs_mlp *model; /* an MLP, or NULL when the model is a transformer (lm) */
    struct qs_dataset *data;
    struct qs_lm *lm;         /* a transformer; its quantizable units are its linear sites */
    struct qs_tokens *tokens; /* token data for lm */
    /* `load reference`: the quantized GGUF whose own site weights `gguf` rules put on the
     * quantized path of lm, the reference (lm_gguf.h); NULL otherwise. Goes with the model. */
    struct qs_lm_gguf_sites *gguf;
    char *model_path, *data_path;
    uint64_t seed; /* session seed: split, stochastic rounding, probes */
    uint64_t split_seed;
    double f_train, f_calib;
    struct qs_split split;
    int calib_n;        /* calibration samples used (<= split.n_calib) */
    double gate_min;    /* task-learned gate: float test accuracy >= gate_min */
    double gate_lm;     /* transformers: the float loss must be below the held-out
                           tokens' unigram entropy by this share of it (default 0.25) */
    int lm_float_valid; /* lm_float: the float model's held-out metrics, cached */
    double lm_float_loss, lm_unigram;
    enum qs_regime regime;
    int nrules;
    struct qs_rule rules[64];
    struct qs_layer_state *ls; /* nlayers */
    /* caches */
    int f_valid; /* float activations computed */
    struct qs_acts f_acts[2];
    struct qs_acts q_acts[2];
    int q_valid[2]; /* quantized path valid for layers [0, q_valid) */
    /* transformers keep no whole-model caches (qs_bench_update fills none for them): analyses
     * stream window by window (qs_bench_stream) and keep only what they need, within budget */
    size_t act_budget;    /* bytes of captured activations a streaming pass or a site's
                             row cache may hold (default QS_ACT_BUDGET) */
    int calib_tokens;     /* set calib tokens=N: the budget asked for (0: windows given) */
    int ctx_set;          /* set ctx N: a transformer's windows are N tokens (at most its
                             context; 0: the whole context), for this and later models */
    int test_windows;     /* transformers: held-out runs (eval's loss_q, KL, the studies'
                             losses) take the split's first test_windows windows (0: all
                             of it; study q2 heldout_tokens=); the gate and its float loss
                             stay on the whole split (a property of the model) */
    struct qs_site_rows { /* one site's input rows (both paths, both splits) */
        int site;         /* -1: none */
        int n[2];         /* rows per split */
        float *xf[2], *xq[2];
    } rows;
    struct qs_site_err_cache *errc; /* `error`'s per-site sums and KL runs (transformers) */
    struct qs_moments_cache *momc;  /* sites' input moments (moments.h), within a budget */
    struct qs_resid_cache *resc[2]; /* block-entry residuals of each split (transformers) */
    double *head_gram; /* a transformer head's W^T W (in x in, double): `error` of a float head
                          (errors.c); dropped with the model (qs_bench_lm_drop) */
    int head_direct;   /* 1: `error` computes a float head's outputs instead (a check) */
    /* An output rewrite at every site of a corrected path (study q2's shared corrector, q2.h):
     * qs_bench_layer_forward calls it on the site's output y (n, out), after the site's own
     * correction, whenever apply_corr is set; NULL: none. The activation caches do not know
     * it: set it only around a run (qs_bench_run_ex) whose caches are already valid, and clear
     * it after. */
    int (*site_out)(void *ctx, int site, float *y, int n, int out, qs_err *e);
    void *site_out_ctx;
    /* front-end hooks (may be NULL) */
    qs_progress_fn progress;
    void *progress_ctx;
    _Atomic int cancel; /* set from another thread to cancel long work */
    int methods_busy;   /* qs_bench_methods_refresh is running (no re-entry) */
    /* the quantized sites' decoded weights (qs_site_wq), least recently used first out */
    struct qs_wcache *wcache;
    size_t wq_budget; /* bytes of decoded weights it may hold (QS_WQ_BUDGET) */
};

/* ---- quantized weights: kept as codes, decoded on use ------------------------------------ */

/* The default wq_budget: 512 MiB (every quantized site of GPT-2-small fits; a 1B model's
 * do not, and are decoded again as a forward reaches them). */
#define QS_WQ_BUDGET ((size_t)512 << 20)
/* Site i's quantized weight Q(W): (out, in), as the forward computes with it (a method's
 * effective weight in the original basis), decoded from its codes into the bench's weights
 * cache: bit for bit the dequantization of site i's packed codes now. NULL with a message
 * when the site's weight is not quantized (wquant 0) or out of memory. The pointer is valid
 * until the next qs_site_wq call for another site (which may evict it) or a change of site i
 * (the cache evicts the least recently used sites beyond wq_budget; it always holds the one
 * asked for, even beyond the budget). Every read of a site's quantized weight goes through
 * here (or qs_site_wq_pin). */
const float *qs_site_wq(struct qs_bench *b, int i, qs_err *e);
/* The same, pinned: valid until qs_site_wq_unpin_all (or a change of site i), for a caller that
 * needs several sites' weights at once (exports). Pinned sites are held beyond the budget. */
const float *qs_site_wq_pin(struct qs_bench *b, int i, qs_err *e);
void qs_site_wq_unpin_all(struct qs_bench *b);
/* Replaces site i's quantized weight by the codes *p (moved in: *p is zeroed), or makes it float
 * (p NULL); xform: the codes are in the site's method basis (wq_xform). Frees the old codes,
 * forgets their decoded copy and gives the site a new generation. */
void qs_site_set_packed(struct qs_bench *b, int i, struct qs_packed *p, int xform);
/* What the weights take: the quantized sites' codes (packed_bytes, nquant sites), the decoded
 * copies the cache holds (bytes, nsites of them), its budget, decodes and hits so far. */
struct qs_wcache_info {
    size_t packed_bytes, bytes, budget;
    int nquant, nsites;
    long decodes, hits;
};
void qs_bench_wcache_info(const struct qs_bench *b, struct qs_wcache_info *w);
/* Drops every decoded copy, pinned or not (the next reads decode again). */
void qs_bench_wcache_clear(struct qs_bench *b);
/* Evicts unpinned decoded copies, least recently used first, until the cache holds at most
 * wq_budget (pinned copies stay, beyond it). */
void qs_bench_wcache_trim(struct qs_bench *b);

/* A quantizable unit: an MLP layer, or a transformer's linear site. b: (out) or NULL (a site
 * without a bias). Its float weight is read through qs_bench_w. */
struct qs_unit {
    const char *name;
    int in, out;
    const float *b;
};
int qs_bench_nunits(const struct qs_bench *b);
void qs_bench_unit(const struct qs_bench *b, int i, struct qs_unit *u);
/* Unit i's float weight W: (out, in). A transformer's 16-bit site is widened into the model's
 * float-weights cache (qs_lm_site_w: the pointer stays valid until a request for a third site);
 * every other is the model's own array. NULL with a message when out of memory or when the
 * model file changed on disk. */
const float *qs_bench_w(struct qs_bench *b, int i, qs_err *e);

/* Creates an empty bench (no model). Free with qs_bench_free. */
struct qs_bench *qs_bench_new(void);
void qs_bench_free(struct qs_bench *b);

/* Replaces the model / data (invalidating caches). Ownership of m / d passes to the bench. */
int qs_bench_set_model(struct qs_bench *b, struct qs_mlp *m, const char *path, qs_err *e);
int qs_bench_set_data(struct qs_bench *b, struct qs_dataset *d, const char *path, qs_err *e);
/* Replaces the model by a transformer / loads token data for it (ownership passes). */
int qs_bench_set_lm(struct qs_bench *b, struct qs_lm *m, const char *path, qs_err *e);
int qs_bench_set_tokens(struct qs_bench *b, struct qs_tokens *t, const char *path, qs_err *e);
/* Staging: a command that replaces the model or the data builds the new state in a stage and
 * swaps it in only when every step has succeeded, so that a failed command changes nothing.
 * qs_bench_stage returns an empty bench with b's settings (seeds, split fractions, calibration
 * size, gates, regime, rules, progress hooks) and, moved out of b until commit or abort, what
 * KEEP names: the model of either kind with its per-unit state (QS_KEEP_MODEL), the CSV data
 * (QS_KEEP_DATA), the token data (QS_KEEP_TOKENS); the data path goes with the data. b's caches
 * are dropped. NULL when out of memory (b unchanged but for its caches). The stage is worked on
 * with the qs_bench_set_* functions, which must not free what was lent (they free only what
 * they replace, and qs_bench_set_lm frees unfitting tokens only after its last failure). */
enum { QS_KEEP_MODEL = 1, QS_KEEP_DATA = 2, QS_KEEP_TOKENS = 4 };
struct qs_bench *qs_bench_stage(struct qs_bench *b, int keep);
/* Success: b takes the stage's whole state (keeping its address, hooks and cancel flag); what
 * b held and had not lent is freed, and so is the stage. */
void qs_bench_commit(struct qs_bench *b, struct qs_bench *s);
/* Failure: what was lent (the same KEEP) goes back to b; the rest of the stage is freed. */
void qs_bench_abort(struct qs_bench *b, struct qs_bench *s, int keep);
/* Re-makes the split (seed, fractions) and invalidates caches. */
int qs_bench_resplit(struct qs_bench *b, uint64_t seed, double f_train, double f_calib, qs_err *e);
int qs_bench_set_calib(struct qs_bench *b, int n, qs_err *e);
/* A look at fewer calibration windows, set aside from the session (the TUI's preview of a large
 * transformer's errors): qs_bench_calib_peek_begin brings the bench up to date on its own
 * calibration first (pending methods, static activation scales: what the full calibration
 * decides stays decided by it), moves the caches that depend on the calibration aside (the
 * per-site error sums, the input moments, the block-entry residuals, the site rows) and drops any
 * other, then has the analyses use the first n calibration windows (n < the session's).
 * qs_bench_calib_peek_end drops what they cached on those windows and puts back the calibration
 * size and the caches set aside, as they were. calib_n and calib_tokens as the session (and `info`,
 * the journal) see them are the same after; nothing is journaled. Transformers only. */
struct qs_calib_aside {
    int active, calib_n;
    struct qs_site_err_cache *errc;
    struct qs_moments_cache *momc;
    struct qs_resid_cache *resc[2];
    struct qs_site_rows rows;
};
int qs_bench_calib_peek_begin(struct qs_bench *b, int n, struct qs_calib_aside *a, qs_err *e);
void qs_bench_calib_peek_end(struct qs_bench *b, struct qs_calib_aside *a);
/* Whether the files the model's weights are mapped from are unchanged since they were loaded
 * (qs_st_check): 0, or -1 with "PATH changed on disk since it was loaded; load it again". The
 * dispatcher calls it before every command that reads weights. */
int qs_bench_check_files(const struct qs_bench *b, qs_err *e);
/* Checks that model and data fit each other (input width, classes). */
int qs_bench_ready(struct qs_bench *b, qs_err *e);

/* Adds a rule (first match wins, so a new rule goes first, like `quant` overriding earlier ones)
 * and re-resolves. *nmatched receives how many layers it matched. */
int qs_bench_add_rule(struct qs_bench *b, const struct qs_rule *r, int *nmatched, qs_err *e);
int qs_bench_clear_rules(struct qs_bench *b);
int qs_bench_set_regime(struct qs_bench *b, enum qs_regime r, qs_err *e);
/* Resolves rules into per-layer configs; re-quantizes and invalidates only changed layers. */
int qs_bench_resolve(struct qs_bench *b, qs_err *e);

int qs_bench_layer_index(const struct qs_bench *b, const char *name);
/* Writes a "did you mean" suggestion list of layer names close to name into buf. */
void qs_bench_suggest_layer(const struct qs_bench *b, const char *name, char *buf, size_t n);

/* Ensures float activations for both splits and the quantized path up to the last layer. */
int qs_bench_update(struct qs_bench *b, qs_err *e);
/* Marks the quantized path stale from layer i onward. */
void qs_bench_invalidate(struct qs_bench *b, int i);
/* Flags the corrections after layer i whose fit depended on its output (bias, linear) as stale. */
void qs_bench_mark_stale(struct qs_bench *b, int i);

/* Runs layer i on input x: (n, in_i) into pre: (n, out_i). quant is a QS_ROLE_* mask: which of
 * the layer's configured quantizations apply (activations, weights); apply_corr adds its fitted
 * correction (never clocal, which is analysis only). */
int qs_bench_layer_forward(struct qs_bench *b, int i, const float *x, int n, int quant,
                           int apply_corr, float *pre, qs_err *e);

/* Static activation scales, one definition for every family: a unit's scale is the absmax of
 * the FLOAT model's inputs to it over the calibration split (MLP rows, transformer windows), one
 * scale per tensor whatever the rule's granularity (qs_quant_fake_amax scales the whole tensor;
 * nvfp4 keeps its block scales under it). x: len values; 1e-30 when all are zero. */
float qs_bench_static_amax(const float *x, size_t len);
/* Quantizes a unit's input activations x (n, in) into xq (may be x) as its state says: static
 * (the calibrated a_static_amax; an error when not calibrated), token (a scale per row) or
 * dynamic (per tensor, or per group of a row with gran=group:N). Format none copies. */
int qs_bench_act_quant(const struct qs_layer_state *s, const float *x, int n, int in, float *xq,
                       qs_err *e);

struct qs_metric {
    double acc, loss;
    int n;
};

struct qs_eval {
    struct qs_metric f, q;
    double kl;             /* mean KL(p_f || p_q) on the test split */
    double agree;          /* top-1 agreement */
    double bits_w;         /* bits per weight of the whole model (packed sizes; float = 32) */
    double chance;         /* majority-class rate of the test split (transformers: the unigram
                              entropy of the held-out tokens) */
    double gate_threshold; /* MLP: chance + gate_min (1 - chance), the float accuracy must reach
                              it; transformers: (1 - gate_lm) x the unigram entropy, the float
                              loss must stay at or below it */
    int gate_pass;
};
/* Float and quantized task metrics on the test split (the held-out windows of a transformer:
 * loss, KL and top-1 agreement per predicted token; acc NAN, the metric is exp(loss)). */
int qs_bench_eval(struct qs_bench *b, struct qs_eval *ev, qs_err *e);

/* The cached input rows of a site on split s along the float (quant 0) or quantized path
 * (computing the caches as needed): *x (n, in), owned by the bench until its next change. */
int qs_bench_inputs(struct qs_bench *b, enum qs_split_id s, int quant, int site, const float **x,
                    int *n, qs_err *e);
/* Rows per bootstrap unit (MLP: 1, a sample; transformer: ctx, a window) and the units of a
 * split (-1 and e when the model and data are not ready). */
int qs_bench_unit_rows(const struct qs_bench *b);
int qs_bench_split_units(struct qs_bench *b, enum qs_split_id s, qs_err *e);
/* The default act_budget: 512 MiB. */
#define QS_ACT_BUDGET ((size_t)512 << 20)

/* Streaming over a transformer's windows (one window's activations at a time): for every window
 * of split s, the float path runs (stopping after the last wanted site) capturing the inputs of
 * the wanted sites, then the quantized path (every site's rules and corrections) runs from the
 * block of the first site that is not the identity (quantized or corrected) to the last wanted
 * site, and fn is called once per wanted site and window with: xf, xq (n, in) the site's float
 * and quantized-path inputs; yf (n, out) the float pre-activations, given for sites before the
 * first non-identity site (where xq == xf and yq == yf) and else NULL; yq (n, out) the quantized
 * path's pre-activations as its forward computed them (its correction applied), NULL for the
 * head (its linear is not run) and sites where yf is given (yq == yf). Wanted sites whose float
 * inputs of one window exceed act_budget are streamed in several groups (each its own passes).
 * quant 0: only the float pass (xq = xf, yq = NULL). want: nsites flags. */
typedef int (*qs_stream_fn)(void *ctx, int site, int window, const float *xf, const float *xq,
                            const float *yf, const float *yq, int n, qs_err *e);
int qs_bench_stream(struct qs_bench *b, enum qs_split_id s, const unsigned char *want, int quant,
                    qs_stream_fn fn, void *ctx, qs_err *e);
/* The float and quantized paths of every window of split s in lockstep, block by block (both
 * from one qs_lm_scratch): the float pass runs a block keeping the wanted sites' float inputs
 * and outputs, then the quantized pass runs the same block from its own residual stream; blocks
 * before the first non-identity site's are run once. fn is called as qs_bench_stream calls it
 * with quant 1, except that for wanted sites from the first non-identity one on (the head
 * apart) yf is given too: the float pre-activations as the float forward computed them, the
 * bits qs_bench_layer_forward gives on xf with neither roles nor correction. The head's call
 * (xf, xq, NULL, NULL) comes after its window's blocks. What is kept (a block's wanted inputs
 * and outputs, the head's inputs on both paths) must fit act_budget: 1 when it does not (fn
 * not called; qs_bench_stream, which groups sites, is the way then), else 0 or -1 and e
 * (cancel: "cancelled"). b->progress is told after each window. */
int qs_bench_stream_pairs(struct qs_bench *b, enum qs_split_id s, const unsigned char *want,
                          qs_stream_fn fn, void *ctx, qs_err *e);
/* The block a pass over split sp's windows (nw of them from token start) on path k (0 float, 1
 * quantized: every site and correction on) can start from: the last entry at or before block l
 * that sp's cache keeps valid for those windows; 0 (the embeddings) when none, or when the path
 * is rewritten (site_out). Records it as the cache's last_from. */
int qs_bench_resid_resume(struct qs_bench *b, enum qs_split_id sp, int nw, size_t start, int l,
                          int k);
/* Window w's residual stream (ctx x d_model floats) at entry r > 0, a block that
 * qs_bench_resid_resume returned for the same split, path and windows. */
const float *qs_bench_resid_at(const struct qs_bench *b, enum qs_split_id sp, int k, int r, int w);
/* Windows the analyses use on split s (held out: min(held-out, calibration) windows). */
int qs_bench_stream_windows(struct qs_bench *b, enum qs_split_id s, qs_err *e);
/* A transformer site's input rows of both splits on both paths (b->rows), streamed once and kept
 * until a change upstream of it; refused beyond act_budget. MLPs: from the caches. */
int qs_bench_site_rows(struct qs_bench *b, int site, qs_err *e);
/* The second moments of site `site`'s inputs on split s along the float (quant 0) or quantized
 * path (moments.h: X^T X and sum |x_j| in double, rows in a fixed order and blocking): a
 * transformer's are streamed window by window (qs_bench_stream: one window's inputs at a time,
 * O(in^2) memory whatever the calibration size); an MLP's are read from its caches in the same
 * blocks. *m is initialised here and finished; the caller frees it (qs_moments_free). What fits
 * a correction or a quantizer from the inputs' statistics (L2QER, QERA, EoRA, GPTQ) takes them
 * from here rather than from a site's rows. */
struct qs_moments;
int qs_bench_site_moments(struct qs_bench *b, int site, enum qs_split_id s, int quant,
                          struct qs_moments *m, qs_err *e);
/* Whether site i computes other than the float site (quantized, or a correction applied). */
int qs_bench_site_identity(const struct qs_bench *b, int i);
/* Bytes the analyses hold now (activation caches, a site's rows, statistics). */
size_t qs_bench_held_bytes(const struct qs_bench *b);
/* set calib tokens=N (transformers): N / ctx windows (at least 1), the budget remembered. */
int qs_bench_set_calib_tokens(struct qs_bench *b, long tokens, qs_err *e);

/* ---- the user's settings of memory and held-out size (settings.c) ---------------------- */

/* `set memory`: the decoded weights cache's budget in bytes (wq_budget; 0 holds only the site
 * in use) and the activation budget (act_budget, > 0); NULL leaves one as it is. Lowering the
 * weights budget evicts decoded copies down to it at once (pinned ones stay); lowering the
 * activation budget below what a site's cached rows hold drops the caches (streamed again on
 * use). Never changes a number. 0, or -1 with a message (acts 0). */
int qs_bench_set_memory(struct qs_bench *b, const size_t *weights, const size_t *acts, qs_err *e);
/* `set heldout`: a transformer's held-out runs take the split's first `windows` windows (0: all
 * of it; test_windows); tokens > 0 asks for tokens / ctx windows rounded up instead. Refused on
 * an MLP (its test split is rows: set split) and beyond the loaded split's windows. A change
 * drops the caches (held-out activations, error sums, moments). 0 / -1. */
int qs_bench_set_heldout(struct qs_bench *b, long windows, long tokens, qs_err *e);
/* `set ctx`: a transformer's calibration, held-out and training windows are n tokens (1 to
 * the model's context n_pos; 0: the whole context), for this model and those loaded after
 * (each up to its own context): lm->ctx. A change drops what was computed on the old windows
 * (caches, the gate's float loss, static scales, fitted methods) and turns a calibration budget
 * in tokens (set calib tokens=) into windows of the new length. Refused without a transformer.
 * 0 / -1. */
int qs_bench_set_ctx(struct qs_bench *b, int n, qs_err *e);
/* The held-out split's windows of a transformer with token data ((held-out tokens - 1) / ctx),
 * whatever test_windows is; -1 without them. */
int qs_bench_heldout_windows(const struct qs_bench *b);

/* Drops every cached activation (both paths, both splits). */
void qs_bench_caches_free(struct qs_bench *b);
void qs_bench_acts_free(struct qs_acts *a, int nsites, int in0_owned);

/* Task metric of a forward pass on a split with layer-wise choice: quant_mask bit i says whether
 * layer i runs quantized; corr_mask bit i whether its correction is applied. (Layers > 63 follow
 * bit 63.) Used by eval, ablation and sensitivity. logits (MLP only) may be NULL. */
int qs_bench_run(struct qs_bench *b, enum qs_split_id s, uint64_t quant_mask, uint64_t corr_mask,
                 struct qs_metric *m, float *logits, qs_err *e);
/* The same for every family, with the loss of each bootstrap unit (unit_loss: the split's units,
 * may be NULL) and the KL to the float model and top-1 agreement (kl, agree may be NULL; a
 * transformer then runs the float model beside). A transformer's loss is eval's bit for bit. */
int qs_bench_run_ex(struct qs_bench *b, enum qs_split_id s, uint64_t quant_mask, uint64_t corr_mask,
                    struct qs_metric *m, double *unit_loss, double *kl, double *agree, qs_err *e);
/* The split contract in one line: which part of the data trains (the model's own training, for
 * the record), which calibrates (statistics, fits, static scales), which is held out (every
 * judgement), in rows or token windows. */
void qs_bench_split_text(const struct qs_bench *b, char *buf, size_t n);

/* The task metric of the model with given weights (weight-only, float activations, no
 * corrections): site i computes x w[i]^T + bias[i] (bias[i] may be NULL), the float site where
 * w[i] is NULL. allocate bits= scores its candidates with it. */
int qs_bench_run_weights(struct qs_bench *b, enum qs_split_id s, const float *const *w,
                         const float *const *bias, struct qs_metric *m, qs_err *e);

/* The regime in force: which roles some layer quantizes (the set regime when none does). */
enum qs_regime qs_bench_effective_regime(const struct qs_bench *b);

/* The state qs_bench_resolve gives a unit no rule matches (float weights and activations,
 * default options, round-to-nearest, no correction): a newly loaded model's. */
void qs_layer_state_plain(struct qs_layer_state *s);
/* Short descriptions of a layer's weight and activation quantization for tables: "float",
 * "int4/channel", "int4/g32", "mxfp4", "nf4/g64"; activations say how they are scaled:
 * "int8/tensor", "int8/token", "int8/static", "int8/g32". */
void qs_bench_wdesc(const struct qs_layer_state *s, char *buf, size_t n);
void qs_bench_adesc(const struct qs_layer_state *s, char *buf, size_t n);

/* Total bits per weight of the model's weights as configured (packed sizes; float layers 32). */
double qs_bench_bits_per_weight(const struct qs_bench *b);

/* ---- quantizer methods on sites (sitemethod.c) ------------------------------------------- */

/* Computes the pending methods of the sites (wq, packed, the activation transform), in forward
 * order, so that a sequential site sees the sites before it already quantized. When the model
 * and its calibration data are not ready, pending sites stay pending: strict = 0 returns 0
 * then, strict = 1 an error naming the site and what it needs. */
int qs_bench_methods_refresh(struct qs_bench *b, int strict, qs_err *e);
/* Whether some site's method is still to be computed. */
int qs_bench_methods_pending(const struct qs_bench *b);
/* The site's activation transform T (rotation, then division by xs) applied in place to the
 * rows of x: (n, in); inverse = 1 applies T^-1. Activations are quantized as T^-1 Q(T x), so
 * the float product is unchanged. No-op without a transform. */
int qs_bench_act_xform(const struct qs_layer_state *s, float *x, int n, int in, int inverse,
                       qs_err *e);
/* Static activation scale of a site: the absmax of T x over rows x: (n, in) (as
 * qs_bench_static_amax when the site has no transform). */
float qs_bench_site_static_amax(const struct qs_layer_state *s, const float *x, int n, int in);
/* Site i's effective weight wq: (out, in) under format f, options o and method m, computed as
 * a rule would (m->inputs_float chooses the statistics), without changing the site; *bits: the
 * packed bits plus the method's stored input scale. For allocate's candidates. */
int qs_bench_method_weight(struct qs_bench *b, int i, const struct qs_format *f,
                           const struct qs_qopts *o, const struct qs_rule_method *m, float *wq,
                           double *bits, qs_err *e);
/* Frees a site's method state (rotation, scales) and clears mpending. */
void qs_layer_method_clear(struct qs_layer_state *s);

#endif
