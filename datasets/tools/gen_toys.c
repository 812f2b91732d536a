/* gen_toys.c - writes the bundled 2-D toy datasets: DIR/{moons,spirals,xor,circles}.csv with the
 * fixed parameters of qs_toy_bundled() (src/core/toys.c). The output is byte-identical on every
 * run; tests/unit/test_dataset.c regenerates each in memory and compares with the committed file.
 *
 * usage: gen_toys DIR          (`make data` runs `build/tools/gen_toys datasets`) */
#include <stdio.h>

#include "qscope/dataset.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    for (const struct qs_toy_spec *t = qs_toy_bundled(); t->name; t++) {
        char path[4096];
        struct qs_dataset *d = NULL;
        qs_err e = {{0}};
        snprintf(path, sizeof path, "%s/%s.csv", argv[1], t->name);
        if (qs_toy_generate(t->name, t->n, t->noise, t->seed, &d, &e) != 0 ||
            qs_dataset_write_csv(d, path, &e) != 0) {
            fprintf(stderr, "gen_toys: %s\n", e.msg);
            qs_dataset_free(d);
            return 1;
        }
        printf("%s: %s n=%d noise=%g seed=%llu\n", path, t->name, t->n, t->noise,
               (unsigned long long)t->seed);
        qs_dataset_free(d);
    }
    return 0;
}
