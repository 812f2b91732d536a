/* test_spectral.c - spectrum statistics against hand-computed values, the Marchenko-Pastur edge
 * against the empirical top singular value of Gaussian matrices (LAPACK), Spearman and median
 * against hand-ranked cases. */
#include "qscope/spectral.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "test.h"

static void test_identity(void)
{
    /* I_5: five unit values, fro2 = 5. p_i = 1/5: eff_rank = 5; stable = 5 / 1 = 5;
     * k50: 3 values hold 3 >= 2.5; k90: 5 (4 < 4.5); k99: 5.
     * MP edge: sigma^2 = 5 / 25, edge = sqrt(1/5) (2 sqrt 5) = 2 > top = 1: not structured. */
    double sv[5] = {1, 1, 1, 1, 1};
    struct qs_rank_stats st;
    qs_rank_stats_compute(sv, 5, 5.0, 5, 5, &st);
    CHECK_NEAR(st.eff_rank, 5, 1e-12);
    CHECK_NEAR(st.stable_rank, 5, 1e-12);
    CHECK(st.k50 == 3 && st.k90 == 5 && st.k99 == 5);
    CHECK_NEAR(st.mp_edge, 2, 1e-12);
    CHECK(st.top == 1 && st.fro2 == 5);
    CHECK(st.structured == 0 && st.zero == 0 && st.partial == 0 && st.nsv == 5);
    /* the same with float-rounded values and the matrix's exact energy: k50 stays 3 */
    double svr[5] = {1, 1, 1, 0.99999994, 0.99999994};
    qs_rank_stats_compute(svr, 5, 5.0, 5, 5, &st);
    CHECK(st.k50 == 3 && st.k90 == 5 && st.k99 == 5);
    CHECK_NEAR(st.eff_rank, 5, 1e-6);
}

static void test_rank_one(void)
{
    /* 100 x 100 of rank 1, top 10: everything is one direction; MP edge of the same energy:
     * sigma = sqrt(100 / 1e4) = 0.1, edge = 0.1 * 20 = 2 < 10: structured. */
    double sv[100] = {10};
    struct qs_rank_stats st;
    qs_rank_stats_compute(sv, 100, 100.0, 100, 100, &st);
    CHECK_NEAR(st.eff_rank, 1, 1e-12);
    CHECK_NEAR(st.stable_rank, 1, 1e-12);
    CHECK(st.k50 == 1 && st.k90 == 1 && st.k99 == 1);
    CHECK_NEAR(st.mp_edge, 2, 1e-12);
    CHECK(st.structured == 1);
}

static void test_hand_entropy(void)
{
    /* s = (2, 1, 1): p = (2/3, 1/6, 1/6), H = (2/3) ln(3/2) + (1/3) ln 6,
     * exp(H) = (3/2)^(2/3) 6^(1/3) = 2.381101577952299. stable = 6 / 4 = 1.5.
     * k50 = 1 (4 >= 3), k90 = 3 (5 < 5.4), k99 = 3. */
    double sv[3] = {2, 1, 1};
    struct qs_rank_stats st;
    qs_rank_stats_compute(sv, 3, 6.0, 3, 4, &st);
    CHECK_NEAR(st.eff_rank, 2.381101577952299, 1e-12);
    CHECK_NEAR(st.stable_rank, 1.5, 1e-12);
    CHECK(st.k50 == 1 && st.k90 == 3 && st.k99 == 3);
}

static void test_zero_spectrum(void)
{
    double sv[4] = {0, 0, 0, 0};
    struct qs_rank_stats st;
    memset(&st, 0x7f, sizeof st);
    qs_rank_stats_compute(sv, 4, 0.0, 4, 6, &st);
    CHECK(st.zero == 1);
    CHECK(st.fro2 == 0 && st.top == 0 && st.mp_edge == 0 && st.eff_rank == 0);
    CHECK(st.stable_rank == 0 && st.k50 == 0 && st.k90 == 0 && st.k99 == 0);
    CHECK(st.structured == 0 && st.partial == 0);
    CHECK(!isnan(st.eff_rank) && !isnan(st.stable_rank));
    double left[3];
    qs_energy_left(sv, 4, 0.0, 2, left);
    CHECK(left[0] == 0 && left[1] == 0 && left[2] == 0);
    CHECK(qs_mp_edge(0, 4, 6) == 0);
}

static void test_partial_spectrum(void)
{
    /* Only the top 2 of I_5 known: k50 needs 2.5 > 2 -> -1 (beyond the known values); the
     * unseen energy 3 spread over the 3 unseen values gives back eff_rank = 5 (exact here). */
    double sv[2] = {1, 1};
    struct qs_rank_stats st;
    qs_rank_stats_compute(sv, 2, 5.0, 5, 5, &st);
    CHECK(st.partial == 1 && st.nsv == 2);
    CHECK(st.k50 == -1 && st.k90 == -1 && st.k99 == -1);
    CHECK_NEAR(st.eff_rank, 5, 1e-12);
    CHECK_NEAR(st.stable_rank, 5, 1e-12);
    /* top 2 of (3, 1, 1, 1): k50 = 1 is known, k90 is not */
    double sv2[2] = {3, 1};
    qs_rank_stats_compute(sv2, 2, 12.0, 4, 4, &st);
    CHECK(st.k50 == 1 && st.k90 == -1);
}

/* MP edge vs the top singular value of i.i.d. N(0, 9) matrices: 3 (sqrt(m) + sqrt(n)) up to a
 * Tracy-Widom finite-size shift, on average about -1.5 % at these sizes (numpy over 20 draws
 * of 200 x 200: mean 0.983, range 0.959..1.001 of the edge). Accepted: -4 % .. +2 %. */
static void test_mp_edge_gaussian(void)
{
    int shapes[3][2] = {{600, 400}, {300, 300}, {150, 600}};
    qs_rng r;
    qs_rng_seed(&r, 5);
    for (int t = 0; t < 3; t++) {
        int m = shapes[t][0], n = shapes[t][1];
        float *a = malloc((size_t)m * n * sizeof *a);
        for (size_t i = 0; i < (size_t)m * n; i++)
            a[i] = (float)(3.0 * qs_rng_normal(&r));
        double *sv = malloc((size_t)(m < n ? m : n) * sizeof *sv);
        qs_err e;
        CHECK(qs_svd_values(a, m, n, sv, &e) == 0);
        double edge = qs_mp_edge(qs_frob2(a, (size_t)m * n), m, n);
        CHECK_REL(edge, 3.0 * (sqrt(m) + sqrt(n)), 0.01); /* sigma^2 = fro2 / (m n) ~ 9 */
        CHECK(sv[0] >= 0.96 * edge && sv[0] <= 1.02 * edge);
        if (!(sv[0] >= 0.96 * edge && sv[0] <= 1.02 * edge))
            fprintf(stderr, "  %d x %d: top %.6g, edge %.6g\n", m, n, sv[0], edge);
        free(a);
        free(sv);
    }
}

static void test_energy_left(void)
{
    /* s = (3, 2, 1), fro2 = 14: 1, 5/14, 1/14, 0; k = 4 beyond the values: -1 */
    double sv[3] = {3, 2, 1}, left[5];
    qs_energy_left(sv, 3, 14.0, 4, left);
    CHECK(left[0] == 1);
    CHECK_NEAR(left[1], 5.0 / 14, 1e-15);
    CHECK_NEAR(left[2], 1.0 / 14, 1e-15);
    CHECK(left[3] == 0);
    CHECK(left[4] == -1);
    /* top-2 known of a larger energy: the tail share stays */
    qs_energy_left(sv, 2, 20.0, 2, left);
    CHECK_NEAR(left[2], 7.0 / 20, 1e-15);
}

static void test_spearman(void)
{
    /* a = (1, 2, 2, 3) -> ranks (1, 2.5, 2.5, 4); b = (1, 3, 2, 4) -> ranks (1, 3, 2, 4).
     * Centred: (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5): 4.5 / sqrt(4.5 * 5) = 3 / sqrt 10. */
    double a[4] = {1, 2, 2, 3}, b[4] = {1, 3, 2, 4};
    CHECK_NEAR(qs_spearman(a, b, 4), 3 / sqrt(10.0), 1e-12);
    /* ties on both sides: x = (5, 5, 1, 1), y = (2, 2, 2, 9): ranks (3.5, 3.5, 1.5, 1.5) and
     * (2, 2, 2, 4): centred (1, 1, -1, -1), (-.5, -.5, -.5, 1.5): -2 / sqrt(4 * 3) */
    double x[4] = {5, 5, 1, 1}, y[4] = {2, 2, 2, 9};
    CHECK_NEAR(qs_spearman(x, y, 4), -2 / sqrt(12.0), 1e-12);
    /* monotone transforms: +1 and -1 */
    double u[5] = {0.1, 0.5, 0.2, 10, -3}, v[5], w[5];
    for (int i = 0; i < 5; i++) {
        v[i] = exp(u[i]);
        w[i] = -u[i] * u[i] * u[i];
    }
    CHECK_NEAR(qs_spearman(u, v, 5), 1, 1e-12);
    CHECK_NEAR(qs_spearman(u, w, 5), -1, 1e-12);
    double c[3] = {2, 2, 2};
    CHECK(isnan(qs_spearman(c, u, 3)));
    CHECK(isnan(qs_spearman(u, v, 1)));
    double nan_in[3] = {1, NAN, 2};
    CHECK(isnan(qs_spearman(nan_in, u, 3)));
}

static void test_median(void)
{
    double a[5] = {3, -1, 7, 2, 2}, b[4] = {4, 1, 3, 2};
    CHECK(qs_median(a, 5) == 2);
    CHECK(qs_median(b, 4) == 2.5);
    CHECK(a[0] == 3 && b[0] == 4); /* not sorted in place */
    CHECK(isnan(qs_median(a, 0)));
    double n[2] = {1, NAN};
    CHECK(isnan(qs_median(n, 2)));
}

TEST_MAIN("spectral", TEST_CASE(test_identity), TEST_CASE(test_rank_one),
          TEST_CASE(test_hand_entropy), TEST_CASE(test_zero_spectrum),
          TEST_CASE(test_partial_spectrum), TEST_CASE(test_mp_edge_gaussian),
          TEST_CASE(test_energy_left), TEST_CASE(test_spearman), TEST_CASE(test_median))
