/* lm_gguf_check.c - a LLaMA read from GGUF against the same model read from its Hugging Face
 * folder. Usage: lm_gguf_check HF_DIR F32.gguf F16.gguf Q8_0.gguf (files written by
 * tests/tools/make_gguf_llama.py). Checks, printing PASS/FAIL lines with the measured figures:
 *   f32:  every site weight and the embedding equal the folder's bit for bit (so the RoPE row
 *         permutation was undone), logits within 1e-4 of the folder's (the only difference is
 *         rms_norm_eps stored as F32 in GGUF);
 *   f16:  weights equal the folder's rounded to F16, logits within 1e-4 of that rounded model;
 *   q8_0: weights equal qscope's own q8_0 quantization of the folder's (qs_quant_fake), logits
 *         within 1e-4 of that model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/half.h"
#include "qscope/lm.h"

static int fails;

static void report(int ok, const char *name, const char *fmt, double v)
{
    printf("%s gguf.%s\n", ok ? "PASS" : "FAIL", name);
    fprintf(stderr, "  %s: ", name);
    fprintf(stderr, fmt, v);
    fprintf(stderr, "\n");
    fails += !ok;
}

/* The folder's model with every 2-D weight mapped by kind: 0 as is, 1 F16-rounded, 2 q8_0. */
static int transform(struct qs_lm *m, int kind)
{
    if (kind == 0)
        return 0;
    struct qs_format f;
    struct qs_qopts o;
    qs_qopts_default(&o);
    qs_err e;
    qs_format_parse("q8_0", &f, &e);
    for (int s = 0; s < m->nsites + 1; s++) {
        float *w = s < m->nsites ? m->sites[s].w : *qs_lm_slot(m, QS_LM_SLOT_EMBED, 0);
        int rows = s < m->nsites ? m->sites[s].out : m->vocab;
        int cols = s < m->nsites ? m->sites[s].in : m->d_model;
        if (s == m->nsites - 1 && m->tied)
            continue;                 /* the embedding, done below */
        if (kind == 1 || cols % 32) { /* the script writes F16 where q8_0 cannot go */
            for (size_t i = 0; i < (size_t)rows * cols; i++)
                w[i] = qs_f16_to_f32(qs_f32_to_f16(w[i]));
        } else if (qs_quant_fake(&f, &o, w, rows, cols, w, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            return -1;
        }
    }
    return 0;
}

static void compare(const char *dir, const char *file, int kind, const char *tag)
{
    struct qs_lm *a = NULL, *b = NULL;
    qs_err e;
    char name[64];
    if (qs_lm_load(dir, &a, &e) < 0 || transform(a, kind) < 0 || qs_lm_load(file, &b, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        snprintf(name, sizeof name, "llama-%s-load", tag);
        report(0, name, "%g", 0);
        qs_lm_free(a);
        qs_lm_free(b);
        return;
    }
    int same = a->nsites == b->nsites && a->tied == b->tied && a->vocab == b->vocab;
    for (int s = 0; same && s <= a->nsites; s++) {
        const float *x = s < a->nsites ? a->sites[s].w : *qs_lm_slot(a, QS_LM_SLOT_EMBED, 0);
        const float *y = s < a->nsites ? b->sites[s].w : *qs_lm_slot(b, QS_LM_SLOT_EMBED, 0);
        size_t n = s < a->nsites ? (size_t)a->sites[s].out * a->sites[s].in
                                 : (size_t)a->vocab * a->d_model;
        if (memcmp(x, y, n * sizeof *x)) {
            fprintf(stderr, "  %s: site %d (%s) differs\n", tag, s,
                    s < a->nsites ? a->sites[s].name : "embedding");
            same = 0;
        }
        if (s < a->nsites && strcmp(a->sites[s].name, b->sites[s].name))
            same = 0;
    }
    snprintf(name, sizeof name, "llama-%s-weights", tag);
    report(same, name, "bit-identical: %g", same);
    int T = a->ctx;
    uint32_t *tok = malloc((size_t)T * sizeof *tok);
    float *la = malloc((size_t)T * a->vocab * sizeof *la);
    float *lb = malloc((size_t)T * a->vocab * sizeof *lb);
    for (int t = 0; t < T; t++)
        tok[t] = (uint32_t)((t * 37 + 11) % a->vocab);
    double md = INFINITY;
    if (qs_lm_forward(a, tok, T, NULL, la, &e) == 0 &&
        qs_lm_forward(b, tok, T, NULL, lb, &e) == 0) {
        md = 0;
        for (size_t i = 0; i < (size_t)T * a->vocab; i++)
            md = fmax(md, fabs((double)la[i] - lb[i]));
    }
    snprintf(name, sizeof name, "llama-%s-logits", tag);
    report(md <= 1e-4, name, "max |logit difference| %.3g", md);
    free(tok);
    free(la);
    free(lb);
    qs_lm_free(a);
    qs_lm_free(b);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: lm_gguf_check HF_DIR F32.gguf F16.gguf Q8_0.gguf\n");
        return 2;
    }
    compare(argv[1], argv[2], 0, "f32");
    compare(argv[1], argv[3], 1, "f16");
    compare(argv[1], argv[4], 2, "q8_0");
    return fails ? 1 : 0;
}
