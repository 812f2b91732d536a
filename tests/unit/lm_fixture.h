/* lm_fixture.h - reading the PyTorch reference fixtures of the transformer gradients
 * (tests/tools/make_grad_fixture.py and the scripts built on it: lm_grad.json, lm_qat.json,
 * lm_variants.json): the JSON file, a case's windows, the fixture's sign vectors, and one
 * tensor's gradient statistics against the fixture's (norm, two sign projections, sampled
 * entries). Shared by test_lm_grad.c, test_qat_lm.c and test_lm_variants.c. */
#ifndef QSCOPE_TEST_LM_FIXTURE_H
#define QSCOPE_TEST_LM_FIXTURE_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "qscope/lm.h"

/* The whole JSON file, parsed; NULL (and a line on stderr) when it cannot be read. */
__attribute__((unused)) static cJSON *lmfx_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "  cannot open %s\n", path);
        return NULL;
    }
    cJSON *root = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    char *buf = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = 0;
        root = cJSON_Parse(buf);
    }
    if (!root)
        fprintf(stderr, "  cannot read %s\n", path);
    free(buf);
    fclose(f);
    return root;
}

/* The fixture's sign vector s_k[i] (make_grad_fixture.py's signs()). */
__attribute__((unused)) static double lmfx_sign(int k, uint64_t i)
{
    uint64_t z = ((uint64_t)k << 32) + i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 63) ? -1.0 : 1.0;
}

/* Case c's windows ("B" rows of "T" + 1 tokens) as one stream: window b starts at b (T + 1). */
__attribute__((unused)) static uint32_t *lmfx_windows(const cJSON *c, int *B, int *T,
                                                      size_t **start)
{
    const cJSON *w = cJSON_GetObjectItem(c, "windows");
    *B = cJSON_GetObjectItem(c, "B")->valueint;
    *T = cJSON_GetObjectItem(c, "T")->valueint;
    uint32_t *tok = malloc((size_t)*B * (*T + 1) * sizeof *tok);
    *start = malloc((size_t)*B * sizeof **start);
    for (int b = 0; b < *B; b++) {
        (*start)[b] = (size_t)b * (*T + 1);
        for (int t = 0; t <= *T; t++)
            tok[(*start)[b] + t] =
                (uint32_t)cJSON_GetArrayItem(cJSON_GetArrayItem(w, b), t)->valueint;
    }
    return tok;
}

/* A gradient against the fixture's statistics of it: relative errors of its norm, of its two
 * sign projections (relative to the norm) and of its worst sampled entry (at, its index). */
struct lmfx_err {
    double norm, proj, entry;
    double got_norm, ref_norm;
    size_t at;
};

__attribute__((unused)) static struct lmfx_err lmfx_grad_err(const float *g, size_t n,
                                                             const cJSON *t)
{
    struct lmfx_err r = {0};
    double nr = 0, p1 = 0, p2 = 0;
    for (size_t k = 0; k < n; k++) {
        nr += (double)g[k] * g[k];
        p1 += lmfx_sign(1, k) * g[k];
        p2 += lmfx_sign(2, k) * g[k];
    }
    r.got_norm = sqrt(nr);
    r.ref_norm = cJSON_GetObjectItem(t, "norm")->valuedouble;
    const cJSON *pj = cJSON_GetObjectItem(t, "proj");
    r.norm = fabs(r.got_norm - r.ref_norm) / r.ref_norm;
    r.proj = fmax(fabs(p1 - cJSON_GetArrayItem(pj, 0)->valuedouble),
                  fabs(p2 - cJSON_GetArrayItem(pj, 1)->valuedouble)) /
             r.ref_norm;
    const cJSON *ix = cJSON_GetObjectItem(t, "idx"), *vl = cJSON_GetObjectItem(t, "val");
    for (int k = 0; k < cJSON_GetArraySize(ix); k++) {
        size_t at = (size_t)cJSON_GetArrayItem(ix, k)->valuedouble;
        double ref = cJSON_GetArrayItem(vl, k)->valuedouble;
        double er = at < n ? fabs(g[at] - ref) / fabs(ref) : INFINITY;
        if (isnan(er) || er > r.entry) {
            r.entry = er;
            r.at = at;
        }
    }
    return r;
}

/* Loads DIR widened to F32: the backward reads weights in place, and a 16-bit fixture's sites
 * stay the file's bytes until qs_lm_materialize. */
static inline int lm_load_f32(const char *dir, struct qs_lm **m, qs_err *e)
{
    if (qs_lm_load(dir, m, e) < 0)
        return -1;
    if (qs_lm_materialize(*m, e) < 0) {
        qs_lm_free(*m);
        *m = NULL;
        return -1;
    }
    return 0;
}

#endif
