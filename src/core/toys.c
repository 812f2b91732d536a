/* toys.c - deterministic 2-D toy classification problems for teaching.
 *
 * Every generator draws from one qs_rng in a fixed order (clean points, then the noise of each
 * row, x before y, then the row shuffle), computes in double and stores float, so a (name, n,
 * noise, seed) tuple gives the same bytes on every run. */
#include "qscope/dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PI 3.14159265358979323846

#define SPIRAL_TURNS 1.25
#define SPIRAL_R0 0.2
#define XOR_MARGIN 0.1
#define CIRCLES_FACTOR 0.5

/* Clean points and labels for n samples: px, py: (n); lab: (n). Class 0 is rows 0..n/2-1,
 * class 1 the rest (sklearn's n_out = n // 2, n_in = n - n_out). */
typedef void (*toy_fn)(int n, qs_rng *r, double *px, double *py, int *lab);

/* numpy.linspace(a, b, m, endpoint) element i. */
static double linspace(double a, double b, int m, int endpoint, int i)
{
    if (m <= 1)
        return a;
    return a + (b - a) * i / (double)(endpoint ? m - 1 : m);
}

static void gen_moons(int n, qs_rng *r, double *px, double *py, int *lab)
{
    (void)r;
    int n_out = n / 2, n_in = n - n_out;
    for (int i = 0; i < n_out; i++) {
        double t = linspace(0, PI, n_out, 1, i);
        px[i] = cos(t);
        py[i] = sin(t);
        lab[i] = 0;
    }
    for (int i = 0; i < n_in; i++) {
        double t = linspace(0, PI, n_in, 1, i);
        px[n_out + i] = 1 - cos(t);
        py[n_out + i] = 1 - sin(t) - 0.5;
        lab[n_out + i] = 1;
    }
}

static void gen_circles(int n, qs_rng *r, double *px, double *py, int *lab)
{
    (void)r;
    int n_out = n / 2, n_in = n - n_out;
    for (int i = 0; i < n_out; i++) {
        double t = linspace(0, 2 * PI, n_out, 0, i);
        px[i] = cos(t);
        py[i] = sin(t);
        lab[i] = 0;
    }
    for (int i = 0; i < n_in; i++) {
        double t = linspace(0, 2 * PI, n_in, 0, i);
        px[n_out + i] = CIRCLES_FACTOR * cos(t);
        py[n_out + i] = CIRCLES_FACTOR * sin(t);
        lab[n_out + i] = 1;
    }
}

/* Arm k: r = R0 + (1 - R0) t, angle = 2 pi TURNS t + k pi, t ~ U[0, 1). */
static void gen_spirals(int n, qs_rng *r, double *px, double *py, int *lab)
{
    int n0 = n / 2;
    for (int i = 0; i < n; i++) {
        int k = i >= n0;
        double t = qs_rng_uniform(r);
        double rad = SPIRAL_R0 + (1 - SPIRAL_R0) * t;
        double ang = 2 * PI * SPIRAL_TURNS * t + k * PI;
        px[i] = rad * cos(ang);
        py[i] = rad * sin(ang);
        lab[i] = k;
    }
}

/* |x|, |y| ~ U[MARGIN, 1), the sign of x random, the sign of y chosen by the class. */
static void gen_xor(int n, qs_rng *r, double *px, double *py, int *lab)
{
    int n0 = n / 2;
    for (int i = 0; i < n; i++) {
        int k = i >= n0;
        double ax = XOR_MARGIN + (1 - XOR_MARGIN) * qs_rng_uniform(r);
        double ay = XOR_MARGIN + (1 - XOR_MARGIN) * qs_rng_uniform(r);
        double sx = (qs_rng_u64(r) >> 63) ? -1.0 : 1.0;
        double sy = k ? -sx : sx;
        px[i] = sx * ax;
        py[i] = sy * ay;
        lab[i] = k;
    }
}

static const char *const toy_names[] = {"moons", "spirals", "xor", "circles", NULL};
static const toy_fn toy_fns[] = {gen_moons, gen_spirals, gen_xor, gen_circles};

const char *const *qs_toy_names(void)
{
    return toy_names;
}

static const struct qs_toy_spec bundled[] = {
    {"moons", 1000, 0.15, 1}, {"spirals", 1000, 0.08, 2},
    {"xor", 1000, 0.1, 3},    {"circles", 1000, 0.08, 4},
    {NULL, 0, 0, 0},
};

const struct qs_toy_spec *qs_toy_bundled(void)
{
    return bundled;
}

int qs_toy_generate(const char *name, int n, double noise, uint64_t seed, struct qs_dataset **out,
                    qs_err *e)
{
    *out = NULL;
    int which = -1;
    for (int i = 0; name && toy_names[i]; i++)
        if (strcmp(name, toy_names[i]) == 0)
            which = i;
    if (which < 0) {
        char list[128] = "";
        for (int i = 0; toy_names[i]; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     toy_names[i]);
        return qs_errf(e, "toy '%s': unknown; the toys are %s", name ? name : "(null)", list);
    }
    if (n < 4)
        return qs_errf(e, "toy %s: n = %d, need at least 4 samples", name, n);
    if (!(noise >= 0) || !isfinite(noise))
        return qs_errf(e, "toy %s: noise = %g, must be finite and >= 0", name, noise);

    struct qs_dataset *d = qs_calloc(1, sizeof *d);
    double *px = malloc((size_t)n * sizeof *px), *py = malloc((size_t)n * sizeof *py);
    int *lab = malloc((size_t)n * sizeof *lab), *perm = malloc((size_t)n * sizeof *perm);
    char path[128];
    snprintf(path, sizeof path, "toy:%s:n=%d:noise=%g:seed=%llu", name, n, noise,
             (unsigned long long)seed);
    if (d) {
        d->n = n;
        d->d = 2;
        d->nclass = 2;
        d->x = malloc((size_t)n * 2 * sizeof *d->x);
        d->y = malloc((size_t)n * sizeof *d->y);
        d->path = qs_strdup(path);
        d->label_name = qs_strdup("label");
        d->feat_names = qs_calloc(2, sizeof *d->feat_names);
        if (d->feat_names) {
            d->feat_names[0] = qs_strdup("x");
            d->feat_names[1] = qs_strdup("y");
        }
    }
    if (!d || !px || !py || !lab || !perm || !d->x || !d->y || !d->path || !d->label_name ||
        !d->feat_names || !d->feat_names[0] || !d->feat_names[1]) {
        free(px);
        free(py);
        free(lab);
        free(perm);
        qs_dataset_free(d);
        return qs_errf(e, "toy %s: out of memory (n = %d)", name, n);
    }

    qs_rng r;
    qs_rng_seed(&r, seed);
    toy_fns[which](n, &r, px, py, lab);
    for (int i = 0; i < n; i++) {
        px[i] += noise * qs_rng_normal(&r);
        py[i] += noise * qs_rng_normal(&r);
    }
    for (int i = 0; i < n; i++)
        perm[i] = i;
    qs_rng_shuffle(&r, perm, n);
    for (int i = 0; i < n; i++) {
        int s = perm[i];
        d->x[2 * i] = (float)px[s];
        d->x[2 * i + 1] = (float)py[s];
        d->y[i] = lab[s];
    }
    free(px);
    free(py);
    free(lab);
    free(perm);
    *out = d;
    return 0;
}
