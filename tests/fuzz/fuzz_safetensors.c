/* fuzz_safetensors.c - fuzz target for the safetensors reader (libFuzzer entry point; driven by
 * tests/fuzz/driver.c under ASan+UBSan). Any input either fails cleanly with a message or yields
 * tensors whose every byte lies inside the input; each tensor up to 1M elements is converted to
 * F32 and scanned, so an out-of-bounds range would trip AddressSanitizer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/safetensors.h"

#define MAX_ELEMS (1 << 20)

static float buf[MAX_ELEMS];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qs_st_file *f = NULL;
    qs_err e;
    if (qs_st_open_mem(data, size, "fuzz", &f, &e) < 0) {
        if (f != NULL || strncmp(e.msg, "fuzz: ", 6) != 0)
            abort(); /* failures must leave no object and name the file */
        return 0;
    }
    const unsigned char *lo = data, *hi = data + size;
    const unsigned char *prev_end = NULL;
    for (int i = 0; i < qs_st_count(f); i++) {
        const struct qs_st_tensor *t = qs_st_get(f, i);
        const unsigned char *p = t->data;
        if (p < lo || p > hi || t->nbytes > (size_t)(hi - p) ||
            t->nbytes != (size_t)t->numel * qs_dtype_size(t->dtype) || t->ndim < 0 ||
            t->ndim > QS_ST_MAXDIM || qs_st_find(f, t->name) != t)
            abort();
        if (t->nbytes) { /* non-empty tensors come in offset order and never overlap */
            if (prev_end && p < prev_end)
                abort();
            prev_end = p + t->nbytes;
        }
        if (t->numel > MAX_ELEMS)
            continue;
        int rc = qs_st_to_f32(t, buf, &e);
        if ((rc < 0) != (t->dtype == QS_DT_BOOL))
            abort();
        int64_t bad = -1;
        if (!qs_st_check_finite(t, &bad) && (bad < 0 || bad >= t->numel))
            abort();
        const float *v = qs_st_f32_view(t);
        if (v && t->numel && memcmp(v, buf, t->nbytes) != 0)
            abort();
    }
    for (int i = 0; i < qs_st_meta_count(f); i++)
        if (qs_st_meta(f, qs_st_meta_key(f, i)) == NULL || !qs_st_meta_value(f, i))
            abort();
    qs_st_close(f);
    return 0;
}
