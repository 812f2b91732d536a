/* dataset.c - CSV datasets through libcsv's streaming parser, writing, splits and gathering.
 *
 * The parser runs libcsv with CSV_REPALL_NL so that every line end reaches the row callback:
 * that is how blank lines are skipped and physical line numbers kept for messages (libcsv itself
 * does not track lines). A row is buffered as text until its end so that a ragged row is reported
 * as ragged rather than by whichever of its shifted cells fails to parse first. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* newlocale/uselocale */
#endif
#include "qscope/dataset.h"

#include <csv.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 65536
#define SHOW_CELL 40 /* characters of a bad cell quoted in a message */

/* ---- cell helpers ---------------------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Trims [*s, *s + *len) in place. */
static void trim(const char **s, size_t *len)
{
    const char *p = *s;
    size_t n = *len;
    while (n && is_space(*p)) {
        p++;
        n--;
    }
    while (n && is_space(p[n - 1]))
        n--;
    *s = p;
    *len = n;
}

enum num_kind { NUM_OK, NUM_EMPTY, NUM_BAD, NUM_NONFINITE, NUM_FLOAT_RANGE };

/* Parses a whole cell (NUL-terminated at s[len]; may hold embedded NULs) as a double. The
 * caller has switched the thread to the C locale. NUM_NONFINITE still counts as "a number" for
 * header detection, so that a first data row holding "nan" is reported rather than silently
 * taken for a header. */
static enum num_kind parse_num(const char *s, size_t len, double *v)
{
    trim(&s, &len);
    if (len == 0)
        return NUM_EMPTY;
    char *end = NULL;
    errno = 0;
    double x = strtod(s, &end);
    if (end != s + len || end == s)
        return NUM_BAD;
    *v = x;
    return isfinite(x) ? NUM_OK : NUM_NONFINITE;
}

/* A printable, bounded copy of a cell for messages. */
static void show_cell(char *dst, size_t cap, const char *s, size_t len)
{
    trim(&s, &len);
    size_t k = 0;
    for (size_t i = 0; i < len && k + 4 < cap; i++) {
        if (i == SHOW_CELL) {
            memcpy(dst + k, "...", 3);
            k += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        dst[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[k] = '\0';
}

/* ---- the streaming loader -------------------------------------------------------------- */

struct loader {
    const char *name; /* file name for messages */
    const char *label_spec;
    qs_err *e;
    int failed;

    long line;     /* physical line on which the next row starts */
    long row_line; /* line on which the current row started */
    int prev_cr;   /* the last line end was '\r' (so a following "\n" is its CRLF partner) */

    /* current row, as text: cells are NUL-terminated in text[off[i]..off[i]+len[i]] */
    char *text;
    size_t tlen, tcap;
    size_t *off, *len;
    int ncell, cellcap;
    long embedded_nl; /* newlines inside quoted cells of the current row */

    int ncols; /* 0 until the first row */
    int has_header;
    long first_line;
    int label_col;
    char **names; /* ncols column names, as given or generated */

    float *x;
    int *y;
    size_t rowcap; /* rows allocated in x and y */
    int n;
    int maxlabel;
};

static void fail(struct loader *L, long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct loader *L, long line, const char *fmt, ...)
{
    char tmp[QS_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (line > 0)
        qs_errf(L->e, "%s:%ld: %s", L->name, line, tmp);
    else
        qs_errf(L->e, "%s: %s", L->name, tmp);
    L->failed = 1;
}

static void cell_cb(void *data, size_t len, void *ctx)
{
    struct loader *L = ctx;
    if (L->failed)
        return;
    const char *s = data ? data : "";
    if (!data)
        len = 0;
    if (L->ncell == 0)
        L->row_line = L->line;
    for (size_t i = 0; i < len; i++)
        L->embedded_nl += s[i] == '\n';
    if (L->ncell == L->cellcap) {
        if (L->cellcap > INT_MAX / 2) {
            fail(L, L->row_line, "row has too many cells");
            return;
        }
        int cap = L->cellcap ? 2 * L->cellcap : 64;
        size_t *o = realloc(L->off, (size_t)cap * sizeof *o);
        if (!o) {
            fail(L, L->row_line, "out of memory");
            return;
        }
        L->off = o;
        size_t *l = realloc(L->len, (size_t)cap * sizeof *l);
        if (!l) {
            fail(L, L->row_line, "out of memory");
            return;
        }
        L->len = l;
        L->cellcap = cap;
    }
    if (len + 1 > L->tcap - L->tlen) {
        size_t cap = L->tcap ? L->tcap : 1024;
        while (len + 1 > cap - L->tlen) {
            if (cap > SIZE_MAX / 2) {
                fail(L, L->row_line, "row too long");
                return;
            }
            cap *= 2;
        }
        char *t = realloc(L->text, cap);
        if (!t) {
            fail(L, L->row_line, "out of memory");
            return;
        }
        L->text = t;
        L->tcap = cap;
    }
    memcpy(L->text + L->tlen, s, len);
    L->text[L->tlen + len] = '\0';
    L->off[L->ncell] = L->tlen;
    L->len[L->ncell] = len;
    L->ncell++;
    L->tlen += len + 1;
}

static const char *cell(const struct loader *L, int i)
{
    return L->text + L->off[i];
}

/* "column 3 ('petal')" or "column 3" without a header. */
static void describe_col(const struct loader *L, int j, char *dst, size_t cap)
{
    if (L->has_header) {
        char nm[SHOW_CELL + 8];
        show_cell(nm, sizeof nm, L->names[j], strlen(L->names[j]));
        snprintf(dst, cap, "column %d ('%s')", j, nm);
    } else {
        snprintf(dst, cap, "column %d", j);
    }
}

/* Resolves L->label_spec against the first row; 0 or fails. */
static int resolve_label(struct loader *L)
{
    const char *spec = L->label_spec;
    if (!spec || !*spec) {
        L->label_col = L->ncols - 1;
        return 0;
    }
    size_t sl = strlen(spec);
    const char *ts = spec;
    trim(&ts, &sl);
    if (L->has_header) {
        for (int j = 0; j < L->ncols; j++)
            if (strlen(L->names[j]) == sl && memcmp(L->names[j], ts, sl) == 0) {
                L->label_col = j;
                return 0;
            }
    }
    char buf[64];
    int is_int = 0;
    long idx = 0;
    if (sl > 0 && sl < sizeof buf) {
        memcpy(buf, ts, sl);
        buf[sl] = '\0';
        char *end;
        errno = 0;
        idx = strtol(buf, &end, 10);
        is_int = *end == '\0' && errno == 0;
    }
    if (is_int) {
        if (idx < -(long)L->ncols || idx >= L->ncols) {
            fail(L, L->first_line,
                 "label column %ld is out of range: the file has %d columns (0..%d, or -%d..-1)",
                 idx, L->ncols, L->ncols - 1, L->ncols);
            return -1;
        }
        L->label_col = (int)(idx < 0 ? idx + L->ncols : idx);
        return 0;
    }
    char shown[SHOW_CELL + 8];
    show_cell(shown, sizeof shown, spec, strlen(spec));
    if (!L->has_header) {
        fail(L, L->first_line,
             "label '%s' is not a column index, and the file has no header row (its first row "
             "is all numbers)",
             shown);
        return -1;
    }
    /* List the header, as much of it as fits in a message. */
    char list[QS_ERRLEN - 128];
    size_t k = 0;
    list[0] = '\0';
    for (int j = 0; j < L->ncols; j++) {
        char nm[SHOW_CELL + 8];
        show_cell(nm, sizeof nm, L->names[j], strlen(L->names[j]));
        size_t need = strlen(nm) + (j ? 2 : 0);
        if (k + need + 5 >= sizeof list) {
            memcpy(list + k, ", ...", 6);
            break;
        }
        k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", j ? ", " : "", nm);
    }
    fail(L, L->first_line, "no column named '%s'; the header has: %s", shown, list);
    return -1;
}

/* The first non-blank row: decides header or data, the column count, names and label. */
static int first_row(struct loader *L)
{
    L->first_line = L->row_line;
    L->ncols = L->ncell;
    for (int j = 0; j < L->ncell; j++) {
        double v;
        if (parse_num(cell(L, j), L->len[j], &v) == NUM_BAD) {
            L->has_header = 1;
            break;
        }
    }
    if (L->ncols < 2) {
        fail(L, L->first_line,
             "only one column; a dataset needs at least one feature column and a label column");
        return -1;
    }
    L->names = qs_calloc((size_t)L->ncols, sizeof *L->names);
    if (!L->names) {
        fail(L, L->first_line, "out of memory");
        return -1;
    }
    if (L->has_header) {
        for (int j = 0; j < L->ncols; j++) {
            const char *s = cell(L, j);
            size_t n = L->len[j];
            trim(&s, &n);
            L->names[j] = malloc(n + 1);
            if (!L->names[j]) {
                fail(L, L->first_line, "out of memory");
                return -1;
            }
            memcpy(L->names[j], s, n);
            L->names[j][n] = '\0';
        }
    }
    if (resolve_label(L) != 0)
        return -1;
    /* Generated names: for missing header cells and files without a header. */
    for (int j = 0, f = 0; j < L->ncols; j++) {
        int feat = j != L->label_col;
        if (!L->names[j] || !L->names[j][0]) {
            char nm[32];
            if (feat)
                snprintf(nm, sizeof nm, "x%d", f);
            else
                snprintf(nm, sizeof nm, "col %d", j);
            free(L->names[j]);
            L->names[j] = qs_strdup(nm);
            if (!L->names[j]) {
                fail(L, L->first_line, "out of memory");
                return -1;
            }
        }
        f += feat;
    }
    return 0;
}

static int data_row(struct loader *L)
{
    long ln = L->row_line;
    if (L->ncell != L->ncols) {
        fail(L, ln, "row has %d cells, expected %d", L->ncell, L->ncols);
        return -1;
    }
    if (L->n == INT_MAX) {
        fail(L, ln, "too many rows");
        return -1;
    }
    size_t d = (size_t)L->ncols - 1;
    if ((size_t)L->n == L->rowcap) {
        size_t cap = L->rowcap ? 2 * L->rowcap : 256;
        if (cap > SIZE_MAX / sizeof(float) / d) {
            fail(L, ln, "out of memory");
            return -1;
        }
        float *x = realloc(L->x, cap * d * sizeof *x);
        if (!x) {
            fail(L, ln, "out of memory");
            return -1;
        }
        L->x = x;
        int *y = realloc(L->y, cap * sizeof *y);
        if (!y) {
            fail(L, ln, "out of memory");
            return -1;
        }
        L->y = y;
        L->rowcap = cap;
    }
    float *xr = L->x + (size_t)L->n * d;
    char what[SHOW_CELL + 64], shown[SHOW_CELL + 8];
    for (int j = 0, f = 0; j < L->ncols; j++) {
        double v = 0;
        enum num_kind k = parse_num(cell(L, j), L->len[j], &v);
        if (j == L->label_col) {
            if (k != NUM_OK || v < 0 || v != floor(v) || v >= QS_DATASET_MAX_CLASSES) {
                describe_col(L, j, what, sizeof what);
                show_cell(shown, sizeof shown, cell(L, j), L->len[j]);
                if (k == NUM_EMPTY)
                    fail(L, ln, "label %s: empty cell", what);
                else if (k == NUM_OK && v == floor(v) && v >= QS_DATASET_MAX_CLASSES)
                    fail(L, ln, "label %s: '%s' is too large (labels are 0..%d)", what, shown,
                         QS_DATASET_MAX_CLASSES - 1);
                else
                    fail(L, ln, "label %s: '%s' is not a non-negative integer", what, shown);
                return -1;
            }
            L->y[L->n] = (int)v;
            if ((int)v > L->maxlabel)
                L->maxlabel = (int)v;
            continue;
        }
        if (k == NUM_OK && fabs(v) > FLT_MAX)
            k = NUM_FLOAT_RANGE;
        if (k != NUM_OK) {
            describe_col(L, j, what, sizeof what);
            show_cell(shown, sizeof shown, cell(L, j), L->len[j]);
            if (k == NUM_EMPTY)
                fail(L, ln, "%s: empty cell", what);
            else if (k == NUM_BAD)
                fail(L, ln, "%s: '%s' is not a number", what, shown);
            else if (k == NUM_NONFINITE)
                fail(L, ln, "%s: '%s' is not a finite number", what, shown);
            else
                fail(L, ln, "%s: '%s' is outside the float range", what, shown);
            return -1;
        }
        xr[f++] = (float)v;
    }
    L->n++;
    return 0;
}

static void row_cb(int c, void *ctx)
{
    struct loader *L = ctx;
    if (L->failed)
        return;
    if (L->ncell == 0) { /* blank line (or the LF of a CRLF) */
        if (!(c == '\n' && L->prev_cr) && c != -1)
            L->line++;
        L->prev_cr = c == '\r';
        return;
    }
    if (L->ncols == 0) {
        if (first_row(L) == 0 && !L->has_header)
            data_row(L);
    } else {
        data_row(L);
    }
    L->line += L->embedded_nl + 1;
    L->embedded_nl = 0;
    L->ncell = 0;
    L->tlen = 0;
    L->prev_cr = c == '\r';
}

static void loader_free(struct loader *L)
{
    free(L->text);
    free(L->off);
    free(L->len);
    if (L->names)
        for (int j = 0; j < L->ncols; j++)
            free(L->names[j]);
    free(L->names);
    free(L->x);
    free(L->y);
}

/* The line to blame for a libcsv syntax error: where the unfinished row began. */
static long syntax_line(const struct loader *L)
{
    return L->ncell ? L->row_line : L->line;
}

static void syntax_error(struct loader *L, int code, int at_end)
{
    if (code == CSV_EPARSE)
        fail(L, syntax_line(L), "CSV syntax error: %s",
             at_end ? "quoted field not closed before the end of the file"
                    : "malformed quoted field (text after a closing quote, or a stray quote)");
    else
        fail(L, syntax_line(L), "CSV parser: %s", csv_strerror(code));
}

/* Builds the dataset from a finished loader; takes ownership of its buffers. */
static int loader_finish(struct loader *L, struct qs_dataset **out)
{
    if (L->ncols == 0) {
        fail(L, 0, L->line > 1 ? "no rows (only blank lines)" : "empty file (no rows)");
        return -1;
    }
    if (L->n == 0) {
        fail(L, L->first_line, "header row but no data rows");
        return -1;
    }
    struct qs_dataset *d = qs_calloc(1, sizeof *d);
    if (!d) {
        fail(L, 0, "out of memory");
        return -1;
    }
    d->n = L->n;
    d->d = L->ncols - 1;
    d->nclass = L->maxlabel + 1;
    float *x = realloc(L->x, (size_t)d->n * (size_t)d->d * sizeof *x);
    d->x = x ? x : L->x;
    d->y = L->y;
    L->x = NULL;
    L->y = NULL;
    d->path = qs_strdup(L->name);
    d->feat_names = qs_calloc((size_t)d->d, sizeof *d->feat_names);
    if (!d->path || !d->feat_names) {
        qs_dataset_free(d);
        fail(L, 0, "out of memory");
        return -1;
    }
    for (int j = 0, f = 0; j < L->ncols; j++) {
        if (j == L->label_col) {
            d->label_name = L->names[j];
        } else {
            d->feat_names[f++] = L->names[j];
        }
        L->names[j] = NULL;
    }
    *out = d;
    return 0;
}

static void loader_init(struct loader *L, const char *name, const char *label, qs_err *e)
{
    memset(L, 0, sizeof *L);
    L->name = name;
    L->label_spec = label;
    L->e = e;
    L->line = 1;
    L->maxlabel = -1;
}

#define CSV_OPTS (CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL | CSV_REPALL_NL)

/* Runs the parser over a file (f != NULL) or a buffer; the caller owns f. */
static int load(struct loader *L, FILE *f, const char *buf, size_t len, struct qs_dataset **out)
{
    struct csv_parser p;
    if (csv_init(&p, CSV_OPTS) != 0) {
        fail(L, 0, "out of memory");
        return -1;
    }
    locale_t cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (cloc == (locale_t)0) {
        csv_free(&p);
        fail(L, 0, "cannot create the C locale: %s", strerror(errno));
        return -1;
    }
    locale_t old = uselocale(cloc);
    int rc = 0;
    char *chunk = NULL;
    if (f) {
        chunk = malloc(READ_CHUNK);
        if (!chunk) {
            fail(L, 0, "out of memory");
            rc = -1;
        }
        while (rc == 0 && !L->failed) {
            size_t got = fread(chunk, 1, READ_CHUNK, f);
            if (got == 0) {
                if (ferror(f)) {
                    fail(L, 0, "read error: %s", strerror(errno));
                    rc = -1;
                }
                break;
            }
            if (csv_parse(&p, chunk, got, cell_cb, row_cb, L) != got && !L->failed) {
                syntax_error(L, csv_error(&p), 0);
                rc = -1;
            }
        }
    } else if (len && csv_parse(&p, buf, len, cell_cb, row_cb, L) != len && !L->failed) {
        syntax_error(L, csv_error(&p), 0);
        rc = -1;
    }
    if (rc == 0 && !L->failed) {
        if (csv_fini(&p, cell_cb, row_cb, L) != 0 && !L->failed) {
            syntax_error(L, csv_error(&p), 1);
            rc = -1;
        }
    }
    if (rc == 0 && !L->failed)
        rc = loader_finish(L, out);
    if (L->failed)
        rc = -1;
    free(chunk);
    csv_free(&p);
    uselocale(old);
    freelocale(cloc);
    loader_free(L);
    return rc;
}

int qs_dataset_load_csv(const char *path, const char *label, struct qs_dataset **out, qs_err *e)
{
    *out = NULL;
    struct loader L;
    loader_init(&L, path ? path : "(null)", label, e);
    if (!path)
        return qs_errf(e, "load csv: no file name given");
    FILE *f = qs_fopen_regular(path, "CSV file", e); /* a FIFO would block */
    if (!f)
        return -1;
    /* a UTF-8 byte order mark (Excel writes one) is not part of the first cell */
    unsigned char bom[3];
    size_t nb = fread(bom, 1, 3, f);
    if (!(nb == 3 && bom[0] == 0xef && bom[1] == 0xbb && bom[2] == 0xbf) &&
        fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return qs_errf(e, "%s: cannot rewind: %s", path, strerror(errno));
    }
    int rc = load(&L, f, NULL, 0, out);
    fclose(f);
    return rc;
}

int qs_dataset_load_csv_mem(const char *buf, size_t len, const char *label_spec,
                            const char *label_for_msgs, struct qs_dataset **out, qs_err *e)
{
    *out = NULL;
    struct loader L;
    loader_init(&L, label_for_msgs ? label_for_msgs : "<memory>", label_spec, e);
    if (!buf)
        len = 0;
    if (len >= 3 && !memcmp(buf, "\xef\xbb\xbf", 3)) { /* UTF-8 byte order mark */
        buf += 3;
        len -= 3;
    }
    return load(&L, NULL, buf ? buf : "", len, out);
}

void qs_dataset_free(struct qs_dataset *d)
{
    if (!d)
        return;
    free(d->x);
    free(d->y);
    free(d->path);
    free(d->label_name);
    if (d->feat_names)
        for (int j = 0; j < d->d; j++)
            free(d->feat_names[j]);
    free(d->feat_names);
    free(d);
}

/* ---- writing --------------------------------------------------------------------------- */

static int needs_quotes(const char *s)
{
    if (!*s || is_space(s[0]) || is_space(s[strlen(s) - 1]))
        return 1;
    return strpbrk(s, ",\"\r\n") != NULL;
}

static void write_name(FILE *f, const char *s)
{
    if (!s)
        s = "";
    if (needs_quotes(s))
        csv_fwrite(f, s, strlen(s));
    else
        fputs(s, f);
}

void qs_csv_field(FILE *f, const char *s, int first)
{
    if (!first)
        fputc(',', f);
    csv_fwrite(f, s, strlen(s));
}

void qs_csv_num(FILE *f, double v)
{
    char buf[40];
    if (isfinite(v))
        snprintf(buf, sizeof buf, "%.9g", v);
    else
        buf[0] = 0;
    qs_csv_field(f, buf, 0);
}

void qs_csv_int(FILE *f, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    qs_csv_field(f, buf, 0);
}

int qs_dataset_write_csv(const struct qs_dataset *d, const char *path, qs_err *e)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return qs_errf(e, "%s: %s", path, strerror(errno));
    locale_t cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (cloc == (locale_t)0) {
        fclose(f);
        return qs_errf(e, "%s: cannot create the C locale: %s", path, strerror(errno));
    }
    locale_t old = uselocale(cloc);
    for (int j = 0; j < d->d; j++) {
        write_name(f, d->feat_names ? d->feat_names[j] : NULL);
        fputc(',', f);
    }
    write_name(f, d->label_name);
    fputc('\n', f);
    for (int i = 0; i < d->n; i++) {
        const float *xr = d->x + (size_t)i * (size_t)d->d;
        for (int j = 0; j < d->d; j++)
            fprintf(f, "%.9g,", (double)xr[j]);
        fprintf(f, "%d\n", d->y[i]);
    }
    uselocale(old);
    freelocale(cloc);
    int werr = ferror(f) ? errno : 0;
    if (fclose(f) != 0 && !werr)
        werr = errno;
    if (werr)
        return qs_errf(e, "%s: write error: %s", path, strerror(werr));
    return 0;
}

/* ---- splits ---------------------------------------------------------------------------- */

int qs_split_make(int n, uint64_t seed, double f_train, double f_calib, struct qs_split *s,
                  qs_err *e)
{
    memset(s, 0, sizeof *s);
    if (n < 1)
        return qs_errf(e, "split: need at least one sample (n = %d)", n);
    if (!(f_train >= 0 && f_train <= 1) || !(f_calib >= 0 && f_calib <= 1) ||
        f_train + f_calib > 1 + 1e-12)
        return qs_errf(e,
                       "split: fractions train=%g calib=%g must be in [0, 1] and sum to at "
                       "most 1",
                       f_train, f_calib);
    int nt = (int)lround(f_train * n);
    int nc = (int)lround(f_calib * n);
    if (nt > n)
        nt = n;
    if (nc > n - nt)
        nc = n - nt;
    int *perm = malloc((size_t)n * sizeof *perm);
    s->train = qs_calloc((size_t)nt, sizeof *s->train);
    s->calib = qs_calloc((size_t)nc, sizeof *s->calib);
    s->test = qs_calloc((size_t)(n - nt - nc), sizeof *s->test);
    if (!perm || !s->train || !s->calib || !s->test) {
        free(perm);
        qs_split_free(s);
        return qs_errf(e, "split: out of memory (n = %d)", n);
    }
    for (int i = 0; i < n; i++)
        perm[i] = i;
    qs_rng r;
    qs_rng_seed(&r, seed);
    qs_rng_shuffle(&r, perm, n);
    memcpy(s->train, perm, (size_t)nt * sizeof *perm);
    memcpy(s->calib, perm + nt, (size_t)nc * sizeof *perm);
    memcpy(s->test, perm + nt + nc, (size_t)(n - nt - nc) * sizeof *perm);
    free(perm);
    s->seed = seed;
    s->f_train = f_train;
    s->f_calib = f_calib;
    s->n_train = nt;
    s->n_calib = nc;
    s->n_test = n - nt - nc;
    return 0;
}

void qs_split_free(struct qs_split *s)
{
    if (!s)
        return;
    free(s->train);
    free(s->calib);
    free(s->test);
    memset(s, 0, sizeof *s);
}

void qs_dataset_gather(const struct qs_dataset *d, const int *idx, int m, float *x, int *y)
{
    size_t w = (size_t)d->d;
    for (int i = 0; i < m; i++) {
        memcpy(x + (size_t)i * w, d->x + (size_t)idx[i] * w, w * sizeof *x);
        if (y)
            y[i] = d->y[idx[i]];
    }
}
