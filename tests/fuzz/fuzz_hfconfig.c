/* fuzz_hfconfig.c - fuzz target for the Hugging Face config.json parser (qs_lm_parse_config;
 * libFuzzer entry point, driven by tests/fuzz/driver.c under ASan+UBSan with the seeds in
 * tests/fuzz/corpus/hfconfig/). Any input either fails with a message that names the file and
 * holds no control character, or yields hyperparameters the loader can allocate for: every size
 * positive and within range, heads consistent, and the weights' byte count computable without
 * overflow. Signed overflow anywhere in the parser trips UBSan. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config.json is read into a NUL-terminated buffer, as qs_lm_load does */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    struct qs_lm m;
    memset(&m, 0, sizeof m);
    qs_err e = {{0}};
    int rc = qs_lm_parse_config(text, strlen(text), "fuzz.json", &m, &e);
    free(text);
    if (rc < 0) {
        if (strncmp(e.msg, "fuzz.json: ", 11) != 0)
            abort();
        for (const unsigned char *p = (const unsigned char *)e.msg; *p; p++)
            if (*p < 0x20 || *p == 0x7f)
                abort(); /* a string from the file reached the message raw */
        return 0;
    }
    size_t bytes;
    if (m.n_layer < 1 || m.d_model < 1 || m.d_ff < 1 || m.vocab < 1 || m.vocab > 65536 ||
        m.ctx < 1 || m.n_head < 1 || m.n_kv_head < 1 || m.d_model % m.n_head ||
        m.n_head % m.n_kv_head || !(m.eps > 0) || qs_lm_weight_bytes(&m, &bytes) < 0 || bytes == 0)
        abort();
    if (m.family == QS_LM_LLAMA && ((m.d_model / m.n_head) % 2 || !(m.rope_theta > 0)))
        abort();
    return 0;
}
