/* test.h - the unit-test harness: each test is a function; a failed CHECK fails the test and
 * prints where. A test binary prints one "PASS name" or "FAIL name" line per test; the runner
 * (tests/run.sh) tallies them into the final "N passed, N failed" line. */
#ifndef QSCOPE_TEST_H
#define QSCOPE_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int qs_test_failed_;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);             \
            qs_test_failed_ = 1;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                                 \
        if (!(fabs(a_ - b_) <= (tol))) {                                                           \
            fprintf(stderr, "  %s:%d: %s = %.9g, %s = %.9g, |diff| > %g\n", __FILE__, __LINE__,    \
                    #a, a_, #b, b_, (double)(tol));                                                \
            qs_test_failed_ = 1;                                                                   \
        }                                                                                          \
    } while (0)

/* Relative closeness: |a-b| <= tol * max(|a|,|b|, floor). */
#define CHECK_REL(a, b, tol)                                                                       \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                                 \
        double m_ = fmax(fmax(fabs(a_), fabs(b_)), 1e-30);                                         \
        if (!(fabs(a_ - b_) <= (tol)*m_)) {                                                        \
            fprintf(stderr, "  %s:%d: %s = %.9g, %s = %.9g, rel diff > %g\n", __FILE__, __LINE__,  \
                    #a, a_, #b, b_, (double)(tol));                                                \
            qs_test_failed_ = 1;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            fprintf(stderr, "  %s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_ ? a_ : "(null)", \
                    b_ ? b_ : "(null)");                                                           \
            qs_test_failed_ = 1;                                                                   \
        }                                                                                          \
    } while (0)

typedef void (*qs_test_fn)(void);
struct qs_test_case {
    const char *name;
    qs_test_fn fn;
};

#define TEST_CASE(f)                                                                               \
    {                                                                                              \
#f, f                                                                                      \
    }

/* Runs the cases; returns the number that failed (use as main's return value). */
static inline int qs_test_run(const char *suite, const struct qs_test_case *cases, int n)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        qs_test_failed_ = 0;
        cases[i].fn();
        printf("%s %s.%s\n", qs_test_failed_ ? "FAIL" : "PASS", suite, cases[i].name);
        fflush(stdout);
        failed += qs_test_failed_;
    }
    return failed ? 1 : 0;
}

#define TEST_MAIN(suite, ...)                                                                      \
    int main(void)                                                                                 \
    {                                                                                              \
        static const struct qs_test_case cases_[] = {__VA_ARGS__};                                 \
        return qs_test_run(suite, cases_, (int)(sizeof cases_ / sizeof cases_[0]));                \
    }

/* The same, then cleanup() (free fixtures, remove a scratch folder) after the last case. The
 * cleanup is not a test: it prints no PASS line; a nonzero return (and a line on stderr) makes
 * the binary exit 1, which the runner reports as a failure of the binary. */
#define TEST_MAIN_CLEANUP(suite, cleanup, ...)                                                     \
    int main(void)                                                                                 \
    {                                                                                              \
        static const struct qs_test_case cases_[] = {__VA_ARGS__};                                 \
        int rc_ = qs_test_run(suite, cases_, (int)(sizeof cases_ / sizeof cases_[0]));             \
        return (cleanup)() != 0 ? 1 : rc_;                                                         \
    }

#endif
