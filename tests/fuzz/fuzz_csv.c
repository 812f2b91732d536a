/* fuzz_csv.c - fuzz target for the CSV loader (qs_dataset_load_csv_mem): every input must either
 * load into a dataset that keeps the loader's invariants or fail with a message naming the
 * buffer; never crash, leak or read out of bounds (run under ASan+UBSan by `make test` with
 * tests/fuzz/driver.c and the seeds in tests/fuzz/corpus/csv/). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/dataset.h"

static void check(const struct qs_dataset *d)
{
    if (d->n < 1 || d->d < 1 || d->nclass < 1 || d->nclass > QS_DATASET_MAX_CLASSES ||
        !d->label_name || strcmp(d->path, "fuzz.csv") != 0)
        abort();
    for (int j = 0; j < d->d; j++)
        if (!d->feat_names[j])
            abort();
    for (int i = 0; i < d->n; i++)
        if (d->y[i] < 0 || d->y[i] >= d->nclass)
            abort();
    for (size_t i = 0; i < (size_t)d->n * (size_t)d->d; i++)
        if (!isfinite(d->x[i]))
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *labels[] = {NULL, "-1", "label", "0"};
    for (size_t k = 0; k < sizeof labels / sizeof *labels; k++) {
        struct qs_dataset *d = NULL;
        qs_err e = {{0}};
        int rc = qs_dataset_load_csv_mem((const char *)data, size, labels[k], "fuzz.csv", &d, &e);
        if (rc == 0)
            check(d);
        else if (d != NULL || strncmp(e.msg, "fuzz.csv:", 9) != 0)
            abort();
        qs_dataset_free(d);
    }
    return 0;
}
