/* lm_impl.h - the parts of struct qs_lm private to src/model (lm.c loads and saves them,
 * lm_grad.c differentiates through them). Not an API: nothing outside src/model includes it. */
#ifndef QSCOPE_LM_IMPL_H
#define QSCOPE_LM_IMPL_H

struct lm_layer {
    float *n1w, *n1b, *n2w, *n2b; /* pre-attention / pre-MLP norm (b: GPT-2 only) */
};

struct qs_lm_priv {
    float *wte;  /* (vocab, d) token embedding */
    float *wpe;  /* (ctx, d) learned positions (GPT-2) */
    float *nfw, *nfb; /* final norm (b: GPT-2 only) */
    struct lm_layer *layer;
    int nmeta;
    char **meta_key, **meta_val;
    char *config; /* the config.json text the model was loaded from (qs_lm_save edits a copy) */
};

#endif
