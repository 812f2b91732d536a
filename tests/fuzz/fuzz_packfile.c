/* fuzz_packfile.c - fuzz target for the packed-export reader (packfile.c), the one reader behind
 * both `load model X.safetensors` of a packed MLP (qs_packfile_layer) and a packed transformer
 * folder (qs_packfile_site, lm.c's hook). Each layer named in qscope.layers (shapes up to 2^16
 * weights) is read through both entry points, the site one with every flag combination and
 * read marks. Any input either fails with a message naming the file and holding no control
 * character, or yields finite weights and biases. Seeds (tests/fuzz/corpus/packfile/): packed
 * exports of moons-mlp, made with
 *   qscope datasets/models/moons-mlp.safetensors datasets/moons.csv -c "quant * int4
 *   gran=group:8 asym; correct fc1 lowrank r=2; correct fc0 bias; export model S1 packed"
 *   ... -c "quant * nvfp4; quant fc2 none; correct fc1 linear; export model S2 packed"
 *   ... -c "quant * q4_k; correct fc1 qera r=2 prec=int4; export model S3 packed" */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/mlp.h"
#include "qscope/packfile.h"
#include "qscope/safetensors.h"

static void check_msg(const qs_err *e)
{
    if (strncmp(e->msg, "fuzz: ", 6) != 0)
        abort();
    for (const unsigned char *p = (const unsigned char *)e->msg; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            abort();
}

static void check_finite(const float *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        if (!(v[i] == v[i]) || v[i] - v[i] != 0.0f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    if (qs_st_open_mem(data, size, "fuzz", &f, &e) < 0)
        return 0;
    const char *layers = qs_st_meta(f, "qscope.layers"),
               *shapes = qs_st_meta(f, "qscope.weight_shapes");
    unsigned char *used = calloc((size_t)qs_st_count(f) + 1, 1);
    char name[256];
    for (int i = 0; layers && shapes && used && i < 8; i++) {
        /* entry i of both lists */
        const char *s = layers, *t = shapes;
        for (int k = 0; k < i && s && t; k++) {
            s = strchr(s, ',');
            t = strchr(t, ',');
            s = s ? s + 1 : NULL;
            t = t ? t + 1 : NULL;
        }
        if (!s || !t)
            break;
        size_t len = strcspn(s, ",");
        if (len >= sizeof name)
            continue;
        memcpy(name, s, len);
        name[len] = 0;
        long out = strtol(t, NULL, 10), in = 0;
        const char *x = t + strspn(t, "0123456789");
        if (*x == 'x')
            in = strtol(x + 1, NULL, 10);
        if (out < 1 || in < 1 || out > 65536 || in > 65536 || out * in > 65536)
            continue;
        struct qs_layer l;
        memset(&l, 0, sizeof l);
        int rc = qs_packfile_layer(f, "fuzz", name, &l, &e);
        if (rc < 0)
            check_msg(&e);
        else if (rc == 0) {
            check_finite(l.w, (size_t)l.out * l.in);
            check_finite(l.b, (size_t)l.out);
            free(l.w);
            free(l.b);
        }
        for (int flags = 0; flags < 4; flags++) {
            float *w = NULL, *b = NULL;
            rc =
                qs_packfile_site(f, "fuzz", name, name, (int)out, (int)in, flags, &w, &b, used, &e);
            if (rc < 0) {
                check_msg(&e);
                if (w || b)
                    abort();
            } else if (rc == 0) {
                if (!w || !(flags & QS_PACKFILE_BIAS) != !b)
                    abort();
                check_finite(w, (size_t)out * in);
                check_finite(b, (size_t)out);
            }
            free(w);
            free(b);
        }
    }
    free(used);
    qs_st_close(f);
    return 0;
}
