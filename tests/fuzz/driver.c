/* driver.c - a deterministic mutation fuzzer driver for targets written against the libFuzzer
 * entry point (LLVMFuzzerTestOneInput). gcc has no libFuzzer, so this driver runs every seed file
 * given on the command line, then N seeded mutations of each (bit flips, byte sets, truncations,
 * splices, interesting integers). Built with ASan+UBSan by `make test`; with clang the same target
 * links against -fsanitize=fuzzer for open-ended runs.
 *
 * usage: fuzz_X [-n ITER] [-s SEED] FILE... */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rs;
static uint64_t rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

static void mutate(uint8_t *buf, size_t *len, size_t cap)
{
    static const uint32_t interesting[] = {0,      1,      0x7f,       0x80,        0xff,
                                           0x7fff, 0xffff, 0x7fffffff, 0xffffffffu, 0x80000000u};
    int nmut = 1 + (int)(rnd() % 4);
    for (int k = 0; k < nmut; k++) {
        switch (rnd() % 7) {
        case 0: /* flip a bit */
            if (*len)
                buf[rnd() % *len] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* set a byte */
            if (*len)
                buf[rnd() % *len] = (uint8_t)rnd();
            break;
        case 2: /* truncate */
            if (*len)
                *len = rnd() % *len;
            break;
        case 3: /* write an interesting 32-bit value */
            if (*len >= 4) {
                uint32_t v = interesting[rnd() % (sizeof interesting / sizeof *interesting)];
                memcpy(buf + rnd() % (*len - 3), &v, 4);
            }
            break;
        case 4: /* insert an ASCII digit or punctuation */
            if (*len < cap && *len) {
                size_t at = rnd() % *len;
                memmove(buf + at + 1, buf + at, *len - at);
                buf[at] = (uint8_t) "0123456789,.-e\"{}[]:\n "[rnd() % 23];
                (*len)++;
            }
            break;
        case 5: /* duplicate a chunk */
            if (*len && *len < cap) {
                size_t from = rnd() % *len, n = 1 + rnd() % 16;
                if (n > *len - from)
                    n = *len - from;
                if (*len + n > cap)
                    n = cap - *len;
                size_t at = rnd() % *len;
                memmove(buf + at + n, buf + at, *len - at);
                memmove(buf + at, buf + from + (from >= at ? n : 0), n);
                *len += n;
            }
            break;
        default: /* delete a byte */
            if (*len) {
                size_t at = rnd() % *len;
                memmove(buf + at, buf + at + 1, *len - at - 1);
                (*len)--;
            }
        }
    }
}

int main(int argc, char **argv)
{
    long iters = 2000;
    rs = 0x9e3779b97f4a7c15ULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            iters = atol(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc)
            rs = strtoull(argv[++i], NULL, 0) | 1;
    }
    long runs = 0;
    for (; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            fprintf(stderr, "fuzz: cannot open %s\n", argv[i]);
            return 2;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        size_t cap = (size_t)n * 2 + 64;
        uint8_t *seed = malloc((size_t)n + 1), *buf = malloc(cap);
        if (!seed || !buf || fread(seed, 1, (size_t)n, f) != (size_t)n) {
            fprintf(stderr, "fuzz: cannot read %s\n", argv[i]);
            return 2;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(seed, (size_t)n);
        runs++;
        for (long k = 0; k < iters; k++) {
            size_t len = (size_t)n;
            memcpy(buf, seed, len);
            mutate(buf, &len, cap);
            LLVMFuzzerTestOneInput(buf, len);
            runs++;
        }
        free(seed);
        free(buf);
    }
    printf("fuzz: %ld inputs, no crash\n", runs);
    return 0;
}
