/* test_st_release.c - qs_st_release (issue 14): after a loader has converted a tensor, its
 * pages leave the process's resident set (the mapping's Rss in /proc/self/smaps drops to what the
 * other tensors hold), and the bytes still read back the same from the file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/safetensors.h"
#include "test.h"

#define MODEL "datasets/models/tiny-gpt2/model.safetensors"

/* Resident kB of the mapping containing address p (-1: not found). */
static long rss_kb_at(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[512];
    int in = 0;
    long rss = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            continue;
        }
        if (in && sscanf(line, "Rss: %ld kB", &rss) == 1)
            break;
    }
    fclose(f);
    return rss;
}

static void test_release_drops_pages(void)
{
    qs_err e = {{0}};
    struct qs_st_file *f = NULL;
    CHECK(qs_st_open(MODEL, &f, &e) == 0);
    if (!f)
        return;
    int n = qs_st_count(f);
    size_t total = 0;
    volatile unsigned sum = 0;
    for (int i = 0; i < n; i++) { /* touch every byte */
        const struct qs_st_tensor *t = qs_st_get(f, i);
        for (size_t k = 0; k < t->nbytes; k++)
            sum += ((const unsigned char *)t->data)[k];
        total += t->nbytes;
    }
    const void *at = qs_st_get(f, 0)->data;
    long before = rss_kb_at(at);
    /* the largest tensor: its bytes copied, released, read again */
    const struct qs_st_tensor *big = qs_st_get(f, 0);
    for (int i = 1; i < n; i++)
        if (qs_st_get(f, i)->nbytes > big->nbytes)
            big = qs_st_get(f, i);
    unsigned char *copy = malloc(big->nbytes);
    CHECK(copy != NULL);
    if (copy)
        memcpy(copy, big->data, big->nbytes);
    qs_st_release(f, big);
    long mid = rss_kb_at(at);
    for (int i = 0; i < n; i++)
        qs_st_release(f, qs_st_get(f, i));
    long after = rss_kb_at(at);
    fprintf(stderr,
            "  %s: %zu bytes of tensors; mapping Rss %ld kB, %ld kB after the largest "
            "(%zu bytes) is released, %ld kB after all\n",
            MODEL, total, before, mid, big->nbytes, after);
    CHECK(before >= (long)(total / 1024) - 4);
    CHECK(mid <= before - (long)(big->nbytes / 1024) + 8);
    CHECK(after >= 0 && after <= 8);                      /* at most the pages holding the header */
    CHECK(copy && !memcmp(copy, big->data, big->nbytes)); /* read back from the file */
    free(copy);
    qs_st_close(f);
    (void)sum;
}

TEST_MAIN("st_release", TEST_CASE(test_release_drops_pages))
