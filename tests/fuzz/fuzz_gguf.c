/* fuzz_gguf.c - fuzz target for the GGUF reader (libFuzzer entry point; driven by
 * tests/fuzz/driver.c under ASan+UBSan). Any input either fails cleanly with one message naming
 * the input, or yields tensors whose every byte lies inside the input, in no overlapping ranges,
 * each of the size its type and dims give; every decodable tensor up to 1M elements is decoded,
 * and every key is read through each typed getter, so an out-of-bounds read trips ASan. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/ggml.h"
#include "qscope/gguf.h"

#define MAX_ELEMS (1 << 20)

static float buf[MAX_ELEMS];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qs_gguf_file *f = NULL;
    qs_err e;
    if (qs_gguf_open_mem(data, size, "fuzz", &f, &e) < 0) {
        if (f != NULL || strncmp(e.msg, "fuzz: ", 6) != 0 || strchr(e.msg, '\n'))
            abort(); /* failures leave no object and give one line naming the input */
        return 0;
    }
    const unsigned char *lo = data, *hi = data + size;
    for (int i = 0; i < qs_gguf_count(f); i++) {
        const struct qs_gguf_tensor *t = qs_gguf_get(f, i);
        const unsigned char *p = t->data;
        size_t rb;
        if (p < lo || p > hi || t->nbytes > (size_t)(hi - p) || t->ndim < 1 ||
            t->ndim > QS_GGUF_MAXDIM || qs_ggml_row_bytes(t->type, t->ne[0], &rb, NULL) < 0 ||
            rb * (size_t)(t->numel / t->ne[0]) != t->nbytes ||
            t->offset % qs_gguf_alignment(f) != 0 || qs_gguf_find(f, t->name) != t)
            abort();
        for (int j = 0; j < i; j++) {
            const struct qs_gguf_tensor *u = qs_gguf_get(f, j);
            if (t->nbytes && u->nbytes && t->offset < u->offset + u->nbytes &&
                u->offset < t->offset + t->nbytes)
                abort();
        }
        if (t->numel > MAX_ELEMS)
            continue;
        int rc = qs_gguf_to_f32(t, buf, &e);
        if ((rc < 0) == qs_ggml_can_decode(t->type))
            abort();
    }
    for (int i = 0; i < qs_gguf_kv_count(f); i++) {
        const char *k = qs_gguf_kv_key(f, i), *s;
        int64_t v;
        double d;
        if (!k || qs_gguf_kv_find(f, k) != i || qs_gguf_kv_type(f, i, NULL, NULL) < 0)
            abort();
        if (qs_gguf_get_int(f, k, &v, &e) == 0 || qs_gguf_get_float(f, k, &d, &e) == 0 ||
            qs_gguf_get_str(f, k, &s, &e) == 0)
            abort(); /* present keys are found by every getter (value or type error) */
    }
    qs_gguf_close(f);
    return 0;
}
