/* test_dataset.c - CSV loading (header detection, label selection, every bad input with its
 * file:line message), writing round trip, splits, gather, toys (geometry, balance, determinism,
 * byte-identity with the committed datasets/NAME.csv) and the bundled digits set.
 * Run from the repository root (relative paths to datasets/ and tests/fixtures/). */
#include "qscope/dataset.h"

#include <locale.h>
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

#define BAD "tests/fixtures/csv_bad/"

static struct qs_dataset *mem(const char *text, const char *label, qs_err *e)
{
    struct qs_dataset *d = NULL;
    if (qs_dataset_load_csv_mem(text, strlen(text), label, "mem.csv", &d, e) != 0)
        return NULL;
    return d;
}

static void test_header_detection(void)
{
    qs_err e = {{0}};
    struct qs_dataset *d = mem("sepal,petal,label\n1,2,0\n3.5,-4e-3,2\n", NULL, &e);
    CHECK(d != NULL);
    if (!d)
        return;
    CHECK(d->n == 2 && d->d == 2 && d->nclass == 3);
    CHECK_STR(d->feat_names[0], "sepal");
    CHECK_STR(d->feat_names[1], "petal");
    CHECK_STR(d->label_name, "label");
    CHECK_STR(d->path, "mem.csv");
    CHECK(d->x[0] == 1.0f && d->x[1] == 2.0f && d->x[2] == 3.5f && d->x[3] == -4e-3f);
    CHECK(d->y[0] == 0 && d->y[1] == 2);
    qs_dataset_free(d);

    /* One non-numeric cell is enough; empty cells do not count. */
    d = mem(",petal,label\n1,2,0\n", NULL, &e);
    CHECK(d && d->n == 1);
    if (d) {
        CHECK_STR(d->feat_names[0], "x0");
        CHECK_STR(d->feat_names[1], "petal");
    }
    qs_dataset_free(d);
}

static void test_no_header(void)
{
    qs_err e = {{0}};
    struct qs_dataset *d = mem("1,2,0\n3,4,1\n5,6,1", NULL, &e); /* no final newline */
    CHECK(d != NULL);
    if (!d)
        return;
    CHECK(d->n == 3 && d->d == 2 && d->nclass == 2);
    CHECK_STR(d->feat_names[0], "x0");
    CHECK_STR(d->feat_names[1], "x1");
    CHECK_STR(d->label_name, "col 2");
    CHECK(d->x[4] == 5.0f && d->x[5] == 6.0f && d->y[2] == 1);
    qs_dataset_free(d);

    /* Label in column 0 of a header-less file: features renumbered x0, x1. */
    d = mem("0,7,8\n1,9,10\n", "0", &e);
    CHECK(d && d->d == 2);
    if (d) {
        CHECK_STR(d->label_name, "col 0");
        CHECK_STR(d->feat_names[1], "x1");
        CHECK(d->x[0] == 7.0f && d->x[3] == 10.0f && d->y[1] == 1);
    }
    qs_dataset_free(d);
}

static void test_label_selection(void)
{
    const char *csv = "a,b,c\n0,10,20\n1,11,21\n";
    const char *specs[] = {"a", "0", "-3", " a "};
    for (int i = 0; i < 4; i++) {
        qs_err e = {{0}};
        struct qs_dataset *d = mem(csv, specs[i], &e);
        CHECK(d != NULL);
        if (!d)
            continue;
        CHECK_STR(d->label_name, "a");
        CHECK(d->d == 2 && d->nclass == 2 && d->y[0] == 0 && d->y[1] == 1);
        CHECK_STR(d->feat_names[0], "b");
        CHECK_STR(d->feat_names[1], "c");
        CHECK(d->x[0] == 10.0f && d->x[1] == 20.0f && d->x[3] == 21.0f);
        qs_dataset_free(d);
    }
    const char *mid[] = {"b", "1", "-2"};
    for (int i = 0; i < 3; i++) {
        qs_err e = {{0}};
        struct qs_dataset *d = mem("a,b,c\n0.5,3,20\n", mid[i], &e);
        CHECK(d && d->y[0] == 3 && d->nclass == 4 && d->x[0] == 0.5f && d->x[1] == 20.0f);
        if (d)
            CHECK_STR(d->label_name, "b");
        qs_dataset_free(d);
    }
    qs_err e = {{0}};
    struct qs_dataset *d = mem(csv, "-1", &e);
    CHECK(d && d->y[1] == 21 && d->nclass == 22);
    qs_dataset_free(d);
    d = mem(csv, "", &e); /* "" means the default, the last column */
    CHECK(d && d->y[0] == 20);
    qs_dataset_free(d);
    /* A header name wins over an index: column "1" is column 0 here. */
    d = mem("1,x,label\n4,5,0\n", "1", &e);
    CHECK(d && d->y[0] == 4);
    if (d)
        CHECK_STR(d->label_name, "1");
    qs_dataset_free(d);
}

static void test_cell_syntax(void)
{
    /* CRLF, blank lines, quoted cells, spaces around numbers, "3.0" labels, hex, a final row
     * without newline. */
    qs_err e = {{0}};
    const char *csv = "x , \"y\",label\r\n\r\n 1.25 ,\" -2 \",3.0\r\n\n0x10,1e-2,1";
    struct qs_dataset *d = mem(csv, NULL, &e);
    CHECK(d != NULL);
    if (!d) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    CHECK(d->n == 2 && d->d == 2);
    CHECK_STR(d->feat_names[0], "x");
    CHECK_STR(d->feat_names[1], "y");
    CHECK(d->x[0] == 1.25f && d->x[1] == -2.0f && d->y[0] == 3);
    CHECK(d->x[2] == 16.0f && d->x[3] == 1e-2f && d->y[1] == 1);
    qs_dataset_free(d);

    /* Numbers parse in the C locale whatever the process locale (if a comma locale exists). */
    const char *locs[] = {"de_DE.UTF-8", "fr_FR.UTF-8", "de_DE", NULL};
    for (int i = 0; locs[i]; i++) {
        if (!setlocale(LC_NUMERIC, locs[i]))
            continue;
        d = mem("1.5,0\n", NULL, &e);
        CHECK(d && d->x[0] == 1.5f);
        qs_dataset_free(d);
        setlocale(LC_NUMERIC, "C");
        break;
    }
}

/* Loads a bad file and checks that the message starts with "PATH:LINE: " (or "PATH: " when
 * line is 0) and contains what. */
static void expect_bad(const char *file, const char *label, int line, const char *what)
{
    char path[256], prefix[300];
    snprintf(path, sizeof path, BAD "%s", file);
    if (line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", path);
    qs_err e = {{0}};
    struct qs_dataset *d = (struct qs_dataset *)1;
    int rc = qs_dataset_load_csv(path, label, &d, &e);
    int ok = rc == -1 && d == NULL && strncmp(e.msg, prefix, strlen(prefix)) == 0 &&
             strstr(e.msg, what) != NULL;
    if (!ok)
        fprintf(stderr, "  %s: got rc %d \"%s\", want \"%s...%s\"\n", file, rc, e.msg, prefix,
                what);
    CHECK(ok);
    if (rc == 0)
        qs_dataset_free(d);
}

static void test_bad_inputs(void)
{
    expect_bad("does_not_exist.csv", NULL, 0, "No such file or directory");
    expect_bad("empty.csv", NULL, 0, "empty file");
    expect_bad("blank_lines.csv", NULL, 0, "no rows (only blank lines)");
    expect_bad("header_only.csv", NULL, 1, "header row but no data rows");
    expect_bad("ragged.csv", NULL, 4, "row has 2 cells, expected 3");
    expect_bad("ragged_long.csv", NULL, 2, "row has 4 cells, expected 3");
    expect_bad("not_number.csv", NULL, 3, "column 1 ('petal'): 'abc' is not a number");
    expect_bad("nan.csv", NULL, 1, "column 1: 'nan' is not a finite number");
    expect_bad("inf.csv", NULL, 4, "column 1 ('y'): '-inf' is not a finite number");
    expect_bad("overflow.csv", NULL, 2, "column 1 ('y'): '1e39' is outside the float range");
    expect_bad("empty_cell.csv", NULL, 2, "column 1: empty cell");
    expect_bad("label_float.csv", NULL, 3,
               "label column 2 ('label'): '1.5' is not a non-negative integer");
    expect_bad("label_negative.csv", NULL, 3, "'-1' is not a non-negative integer");
    expect_bad("label_text.csv", NULL, 3, "'one' is not a non-negative integer");
    expect_bad("label_huge.csv", NULL, 3, "'70000' is too large");
    expect_bad("bad_quote.csv", NULL, 2, "CSV syntax error");
    expect_bad("unterminated.csv", NULL, 3, "CSV syntax error: quoted field not closed");
    expect_bad("one_column.csv", NULL, 1, "only one column");
    expect_bad("crlf_ragged.csv", NULL, 3, "row has 2 cells, expected 3");
    expect_bad("quoted_newline_ragged.csv", NULL, 4, "row has 4 cells, expected 3");
    /* Label columns that do not exist: the header is listed; checked before the data rows. */
    expect_bad("ragged.csv", "species", 1,
               "no column named 'species'; the header has: sepal, petal, label");
    expect_bad("ragged.csv", "3", 1, "label column 3 is out of range: the file has 3 columns");
    expect_bad("ragged.csv", "-4", 1, "label column -4 is out of range");
    expect_bad("nan.csv", "petal", 1,
               "label 'petal' is not a column index, and the file has "
               "no header row");
    /* A directory opens but cannot be read. */
    qs_err e = {{0}};
    struct qs_dataset *d = NULL;
    CHECK(qs_dataset_load_csv("tests/fixtures/csv_bad", NULL, &d, &e) == -1 && d == NULL);
    CHECK(strncmp(e.msg, "tests/fixtures/csv_bad: ", 24) == 0);
    /* The memory loader names its buffer the same way. */
    CHECK(qs_dataset_load_csv_mem("a,b,c\n1,x,0\n", 12, NULL, "buf.csv", &d, &e) == -1);
    CHECK(strstr(e.msg, "buf.csv:2: column 1 ('b'): 'x' is not a number") == e.msg);
    CHECK(qs_dataset_load_csv_mem(NULL, 0, NULL, NULL, &d, &e) == -1);
    CHECK_STR(e.msg, "<memory>: empty file (no rows)");
}

static void test_write_roundtrip(void)
{
    qs_err e = {{0}};
    struct qs_dataset *a = NULL, *b = NULL;
    CHECK(qs_toy_generate("spirals", 101, 0.3, 99, &a, &e) == 0);
    if (!a)
        return;
    /* Names that need quoting survive. */
    free(a->feat_names[0]);
    a->feat_names[0] = qs_strdup("x, \"first\"");
    char path[] = "/tmp/qs_test_dataset_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) {
        qs_dataset_free(a);
        return;
    }
    close(fd);
    CHECK(qs_dataset_write_csv(a, path, &e) == 0);
    CHECK(qs_dataset_load_csv(path, NULL, &b, &e) == 0);
    if (b) {
        CHECK(b->n == 101 && b->d == 2 && b->nclass == 2);
        CHECK(memcmp(a->x, b->x, sizeof(float) * 202) == 0); /* %.9g is exact for floats */
        CHECK(memcmp(a->y, b->y, sizeof(int) * 101) == 0);
        CHECK_STR(b->feat_names[0], "x, \"first\"");
        CHECK_STR(b->feat_names[1], "y");
        CHECK_STR(b->label_name, "label");
    }
    unlink(path);
    CHECK(qs_dataset_write_csv(a, "/nonexistent_dir_qs/x.csv", &e) == -1);
    CHECK(strstr(e.msg, "/nonexistent_dir_qs/x.csv: No such file or directory") == e.msg);
    qs_dataset_free(a);
    qs_dataset_free(b);
}

static void test_split(void)
{
    qs_err e = {{0}};
    struct qs_split s, t, u;
    CHECK(qs_split_make(1797, 7, 0.6, 0.2, &s, &e) == 0);
    CHECK(s.n_train == 1078 && s.n_calib == 359 && s.n_test == 360);
    CHECK(s.seed == 7 && s.f_train == 0.6 && s.f_calib == 0.2);
    /* Disjoint and covering: every index exactly once. */
    static int seen[1797];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < s.n_train; i++)
        seen[s.train[i]]++;
    for (int i = 0; i < s.n_calib; i++)
        seen[s.calib[i]]++;
    for (int i = 0; i < s.n_test; i++)
        seen[s.test[i]]++;
    int all_once = 1;
    for (int i = 0; i < 1797; i++)
        all_once &= seen[i] == 1;
    CHECK(all_once);
    /* The contract: the permutation is qs_rng_shuffle of 0..n-1 under qs_rng_seed(seed). */
    static int perm[1797];
    for (int i = 0; i < 1797; i++)
        perm[i] = i;
    qs_rng r;
    qs_rng_seed(&r, 7);
    qs_rng_shuffle(&r, perm, 1797);
    CHECK(memcmp(s.train, perm, 1078 * sizeof(int)) == 0);
    CHECK(memcmp(s.calib, perm + 1078, 359 * sizeof(int)) == 0);
    CHECK(memcmp(s.test, perm + 1437, 360 * sizeof(int)) == 0);
    /* Same seed, same split; another seed, another. */
    CHECK(qs_split_make(1797, 7, 0.6, 0.2, &t, &e) == 0);
    CHECK(memcmp(s.train, t.train, 1078 * sizeof(int)) == 0);
    CHECK(memcmp(s.test, t.test, 360 * sizeof(int)) == 0);
    CHECK(qs_split_make(1797, 8, 0.6, 0.2, &u, &e) == 0);
    CHECK(memcmp(s.train, u.train, 1078 * sizeof(int)) != 0);
    qs_split_free(&s);
    qs_split_free(&t);
    qs_split_free(&u);
    CHECK(s.train == NULL && s.n_train == 0);
    qs_split_free(NULL);
    qs_split_free(&s); /* a zeroed split */

    /* Edges: everything in train; round(0.5 * 5) = 3, round(0.3 * 5) = 2 (half away). */
    CHECK(qs_split_make(5, 1, 1.0, 0.0, &s, &e) == 0 && s.n_train == 5 && s.n_test == 0);
    qs_split_free(&s);
    CHECK(qs_split_make(5, 1, 0.5, 0.3, &s, &e) == 0);
    CHECK(s.n_train == 3 && s.n_calib == 2 && s.n_test == 0);
    qs_split_free(&s);
    CHECK(qs_split_make(0, 1, 0.5, 0.2, &s, &e) == -1);
    CHECK(qs_split_make(10, 1, 0.9, 0.2, &s, &e) == -1 && strstr(e.msg, "sum to at most 1"));
    CHECK(qs_split_make(10, 1, -0.1, 0.2, &s, &e) == -1);
    CHECK(qs_split_make(10, 1, NAN, 0.2, &s, &e) == -1 && s.train == NULL);
}

static void test_gather(void)
{
    qs_err e = {{0}};
    struct qs_dataset *d = mem("a,b,c,label\n0,1,2,0\n10,11,12,1\n20,21,22,2\n", NULL, &e);
    CHECK(d != NULL);
    if (!d)
        return;
    int idx[4] = {2, 0, 2, 1};
    float x[12];
    int y[4];
    qs_dataset_gather(d, idx, 4, x, y);
    const float want[12] = {20, 21, 22, 0, 1, 2, 20, 21, 22, 10, 11, 12};
    CHECK(memcmp(x, want, sizeof want) == 0);
    CHECK(y[0] == 2 && y[1] == 0 && y[2] == 2 && y[3] == 1);
    float x1[3];
    qs_dataset_gather(d, idx + 3, 1, x1, NULL);
    CHECK(x1[0] == 10 && x1[2] == 12);
    qs_dataset_free(d);
}

static double rad(const float *p)
{
    return sqrt((double)p[0] * p[0] + (double)p[1] * p[1]);
}

static void test_toy_geometry(void)
{
    qs_err e = {{0}};
    struct qs_dataset *d = NULL;
    /* noise 0: the clean shapes the header promises. */
    CHECK(qs_toy_generate("moons", 200, 0, 1, &d, &e) == 0);
    int ok = d != NULL;
    for (int i = 0; d && i < d->n; i++) {
        const float *p = d->x + 2 * i;
        if (d->y[i] == 0) /* upper unit half circle */
            ok &= fabs(rad(p) - 1) < 1e-6 && p[1] >= -1e-7;
        else { /* (1 - cos t, 0.5 - sin t) */
            float q[2] = {p[0] - 1.0f, p[1] - 0.5f};
            ok &= fabs(rad(q) - 1) < 1e-6 && q[1] <= 1e-7;
        }
    }
    CHECK(ok);
    qs_dataset_free(d);

    CHECK(qs_toy_generate("circles", 200, 0, 1, &d, &e) == 0);
    ok = d != NULL;
    for (int i = 0; d && i < d->n; i++)
        ok &= fabs(rad(d->x + 2 * i) - (d->y[i] ? 0.5 : 1.0)) < 1e-6;
    CHECK(ok);
    qs_dataset_free(d);

    CHECK(qs_toy_generate("xor", 400, 0, 1, &d, &e) == 0);
    ok = d != NULL;
    int quad[4] = {0};
    for (int i = 0; d && i < d->n; i++) {
        const float *p = d->x + 2 * i;
        ok &= (d->y[i] == 1) == ((double)p[0] * p[1] < 0);
        ok &= fabs(p[0]) >= 0.1f && fabs(p[1]) >= 0.1f && fabs(p[0]) <= 1 && fabs(p[1]) <= 1;
        quad[(p[0] > 0) * 2 + (p[1] > 0)]++;
    }
    CHECK(ok);
    CHECK(quad[0] > 60 && quad[1] > 60 && quad[2] > 60 && quad[3] > 60); /* all four used */
    qs_dataset_free(d);

    /* Spirals: r = 0.2 + 0.8 t and angle = 2.5 pi t + k pi, so the angle is a function of r. */
    CHECK(qs_toy_generate("spirals", 400, 0, 1, &d, &e) == 0);
    ok = d != NULL;
    for (int i = 0; d && i < d->n; i++) {
        const float *p = d->x + 2 * i;
        double r = rad(p), t = (r - 0.2) / 0.8;
        double ang = 2 * M_PI * 1.25 * t + d->y[i] * M_PI;
        ok &= r >= 0.2 - 1e-6 && r <= 1 + 1e-6;
        ok &= fabs(r * cos(ang) - p[0]) < 1e-5 && fabs(r * sin(ang) - p[1]) < 1e-5;
    }
    CHECK(ok);
    qs_dataset_free(d);
}

static void test_toy_balance_determinism(void)
{
    qs_err e = {{0}};
    for (const char *const *nm = qs_toy_names(); *nm; nm++) {
        struct qs_dataset *a = NULL, *b = NULL, *c = NULL;
        CHECK(qs_toy_generate(*nm, 1001, 0.1, 5, &a, &e) == 0);
        CHECK(qs_toy_generate(*nm, 1001, 0.1, 5, &b, &e) == 0);
        CHECK(qs_toy_generate(*nm, 1001, 0.1, 6, &c, &e) == 0);
        if (!a || !b || !c) {
            qs_dataset_free(a);
            qs_dataset_free(b);
            qs_dataset_free(c);
            continue;
        }
        CHECK(a->n == 1001 && a->d == 2 && a->nclass == 2);
        int n1 = 0, first_half1 = 0;
        for (int i = 0; i < a->n; i++) {
            n1 += a->y[i];
            first_half1 += i < 500 && a->y[i];
        }
        CHECK(n1 == 501);                              /* 500 / 501 */
        CHECK(first_half1 > 200 && first_half1 < 300); /* rows are shuffled */
        CHECK(memcmp(a->x, b->x, sizeof(float) * 2002) == 0);
        CHECK(memcmp(a->y, b->y, sizeof(int) * 1001) == 0);
        CHECK(memcmp(a->x, c->x, sizeof(float) * 2002) != 0);
        CHECK_STR(a->feat_names[0], "x");
        CHECK_STR(a->feat_names[1], "y");
        CHECK_STR(a->label_name, "label");
        qs_dataset_free(a);
        qs_dataset_free(b);
        qs_dataset_free(c);
    }
    struct qs_dataset *d = NULL;
    CHECK(qs_toy_generate("blobs", 100, 0.1, 1, &d, &e) == -1 && d == NULL);
    CHECK(strstr(e.msg, "blobs") && strstr(e.msg, "moons, spirals, xor, circles"));
    CHECK(qs_toy_generate("moons", 3, 0.1, 1, &d, &e) == -1 && strstr(e.msg, "at least 4"));
    CHECK(qs_toy_generate("moons", 10, -1, 1, &d, &e) == -1);
    CHECK(qs_toy_generate("moons", 10, INFINITY, 1, &d, &e) == -1);
}

/* The committed toy files are exactly what the generator makes (through the CSV loader). */
static void test_bundled_toys_match(void)
{
    int count = 0;
    for (const struct qs_toy_spec *t = qs_toy_bundled(); t->name; t++, count++) {
        qs_err e = {{0}};
        char path[64];
        snprintf(path, sizeof path, "datasets/%s.csv", t->name);
        struct qs_dataset *f = NULL, *g = NULL;
        CHECK(qs_dataset_load_csv(path, NULL, &f, &e) == 0);
        CHECK(qs_toy_generate(t->name, t->n, t->noise, t->seed, &g, &e) == 0);
        if (!f || !g) {
            fprintf(stderr, "  %s\n", e.msg);
        } else {
            CHECK(f->n == t->n && f->d == 2 && f->nclass == 2);
            CHECK(memcmp(f->x, g->x, sizeof(float) * 2 * (size_t)g->n) == 0);
            CHECK(memcmp(f->y, g->y, sizeof(int) * (size_t)g->n) == 0);
            CHECK_STR(f->feat_names[0], "x");
            CHECK_STR(f->label_name, "label");
        }
        qs_dataset_free(f);
        qs_dataset_free(g);
    }
    CHECK(count == 4);
    const struct qs_toy_spec *m = qs_toy_bundled();
    CHECK_STR(m[0].name, "moons");
    CHECK(m[0].n == 1000 && m[0].noise == 0.15 && m[0].seed == 1);
}

/* Reference figures from scikit-learn's load_digits() (python3-sklearn 1.2.1): per-class
 * counts, total pixel sum, sums of rows 0, 1 and 1796 and their labels. */
static void test_digits(void)
{
    qs_err e = {{0}};
    struct qs_dataset *d = NULL;
    CHECK(qs_dataset_load_csv("datasets/digits.csv", NULL, &d, &e) == 0);
    if (!d) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    CHECK(d->n == 1797 && d->d == 64 && d->nclass == 10);
    CHECK_STR(d->feat_names[0], "p0");
    CHECK_STR(d->feat_names[63], "p63");
    CHECK_STR(d->label_name, "label");
    static const int counts[10] = {178, 182, 177, 183, 181, 182, 181, 179, 174, 180};
    int got[10] = {0};
    for (int i = 0; i < d->n; i++)
        got[d->y[i]]++;
    CHECK(memcmp(got, counts, sizeof counts) == 0);
    double sum = 0, mx = 0;
    int integral = 1;
    for (size_t i = 0; i < (size_t)d->n * 64; i++) {
        sum += d->x[i];
        mx = fmax(mx, d->x[i]);
        integral &= d->x[i] == floorf(d->x[i]) && d->x[i] >= 0;
    }
    CHECK(sum == 561718 && mx == 16 && integral);
    double r0 = 0, r1 = 0, rl = 0;
    for (int j = 0; j < 64; j++) {
        r0 += d->x[j];
        r1 += d->x[64 + j];
        rl += d->x[1796 * 64 + j];
    }
    CHECK(r0 == 294 && r1 == 313 && rl == 392);
    CHECK(d->y[0] == 0 && d->y[1] == 1 && d->y[1796] == 8);

    struct qs_split s;
    CHECK(qs_split_make(d->n, 1, 0.6, 0.2, &s, &e) == 0);
    CHECK(s.n_train == 1078 && s.n_calib == 359 && s.n_test == 360);
    qs_split_free(&s);
    qs_dataset_free(d);
}

TEST_MAIN("dataset", TEST_CASE(test_header_detection), TEST_CASE(test_no_header),
          TEST_CASE(test_label_selection), TEST_CASE(test_cell_syntax), TEST_CASE(test_bad_inputs),
          TEST_CASE(test_write_roundtrip), TEST_CASE(test_split), TEST_CASE(test_gather),
          TEST_CASE(test_toy_geometry), TEST_CASE(test_toy_balance_determinism),
          TEST_CASE(test_bundled_toys_match), TEST_CASE(test_digits))
