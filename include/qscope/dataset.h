/* dataset.h - tabular classification data: CSV loading/writing (libcsv), deterministic
 * train/calibration/test splits, and the 2-D toy problems used for teaching.
 *
 * Columns are numbered from 0 everywhere (label=N, "col N", error messages), as in label=-1 for
 * the last column; line numbers in messages are physical lines counted from 1. */
#ifndef QSCOPE_DATASET_H
#define QSCOPE_DATASET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qscope/common.h"

/* Largest accepted class label + 1: keeps one-hot buffers and per-class tables bounded when a
 * file has a stray huge integer in its label column. */
#define QS_DATASET_MAX_CLASSES 65536

struct qs_dataset {
    int n, d;          /* samples, features */
    int nclass;        /* max label + 1 */
    float *x;          /* (n, d) row-major, used exactly as given (no normalisation) */
    int *y;            /* (n) class labels 0..nclass-1 */
    char *path;        /* as given (for toys: "toy:NAME:n=N:noise=S:seed=K") */
    char *label_name;  /* header name of the label column, or "col N" */
    char **feat_names; /* d names (from the header, or "x0".."x{d-1}") */
};

/* Loads a CSV file (a regular file: a FIFO or directory is refused before it can block; a
 * leading UTF-8 byte order mark is skipped, here and in the _mem variant). Header optional:
 * the first non-blank row is a header iff one of its non-empty cells is not a number. Blank lines
 * are skipped; LF, CRLF and CR line ends and RFC 4180 quoting are accepted. label: NULL or "" ->
 * last column; a header name (exact, after trimming); or an integer column index, negative counting
 * from the end ("-1" = last). A header name wins over an index. Feature cells: strtod in the C
 * locale (whatever the process locale), the whole cell consumed, surrounding spaces allowed,
 * NaN/Inf and values outside float range rejected. Label cells: integers in
 * 0..QS_DATASET_MAX_CLASSES-1 ("3" or "3.0"). On success *out is a new dataset (free with
 * qs_dataset_free). On failure returns -1, *out is NULL and e names the file and, where there is
 * one, the line: missing/unreadable file (strerror), empty file, header without data rows, ragged
 * row, empty or non-numeric cell, unknown label column (the header is listed), bad label, CSV
 * syntax error. */
int qs_dataset_load_csv(const char *path, const char *label, struct qs_dataset **out, qs_err *e);

/* The same parser over a memory buffer buf[0..len) (need not be NUL-terminated).
 * label_spec: as label above. label_for_msgs: the name used in messages and stored as
 * d->path (NULL -> "<memory>"). */
int qs_dataset_load_csv_mem(const char *buf, size_t len, const char *label_spec,
                            const char *label_for_msgs, struct qs_dataset **out, qs_err *e);

/* Frees a dataset and everything it owns; accepts NULL. */
void qs_dataset_free(struct qs_dataset *d);

/* Writes d to path as CSV: a header row (feature names, then the label name; quoted only when a
 * name needs it), then one row per sample, features as %.9g (round-trips every float exactly)
 * and the label as an integer, LF line ends, C locale. Errors name the path (strerror). */
int qs_dataset_write_csv(const struct qs_dataset *d, const char *path, qs_err *e);

/* Writing CSV rows by field (the studies' and export csv's tables): a field quoted by libcsv's
 * rules, preceded by a comma unless first; a number as %.9g (empty when not finite); an
 * integer. */
void qs_csv_field(FILE *f, const char *s, int first);
void qs_csv_num(FILE *f, double v);
void qs_csv_int(FILE *f, long long v);

/* A deterministic split: a permutation of 0..n-1 from qs_rng seeded with seed
 * (qs_rng_shuffle); the first round(f_train*n) indices are train, the next round(f_calib*n)
 * calibration (clamped to what is left), the rest test. Index arrays are owned by the split. */
struct qs_split {
    uint64_t seed;
    double f_train, f_calib;
    int n_train, n_calib, n_test;
    int *train, *calib, *test;
};

/* Fills *s (previous contents ignored). Errors: n < 1, fractions not in [0, 1] or summing past
 * 1, out of memory. On failure *s is zeroed. */
int qs_split_make(int n, uint64_t seed, double f_train, double f_calib, struct qs_split *s,
                  qs_err *e);

/* Frees the index arrays and zeroes *s; accepts NULL and a zeroed split. */
void qs_split_free(struct qs_split *s);

/* Copies rows idx[0..m) of d into x: (m, d->d) row-major and y: (m) (y may be NULL).
 * Indices must be in 0..d->n-1. */
void qs_dataset_gather(const struct qs_dataset *d, const int *idx, int m, float *x, int *y);

/* 2-D toy problems, deterministic for (name, n, noise, seed); features "x","y", label "label":
 *   moons    two interleaved half circles (sklearn make_moons geometry, evenly spaced angles)
 *   spirals  two-arm Archimedean spiral, 1.25 turns, radius 0.2..1 (arms 0.32 apart)
 *   xor      uniform in [-1,1]^2 outside a 0.1 margin around the axes, label 1 iff x*y < 0
 *   circles  two concentric circles, radii 1 and 0.5 (sklearn make_circles, factor 0.5)
 * noise = std of Gaussian noise added to each coordinate after labelling. Classes balanced
 * (sizes differ by at most one); rows are shuffled. Errors: unknown name (the valid ones are
 * listed), n < 4, noise negative or not finite, out of memory. */
int qs_toy_generate(const char *name, int n, double noise, uint64_t seed, struct qs_dataset **out,
                    qs_err *e);

/* The toy names, NULL-terminated. */
const char *const *qs_toy_names(void);

/* The parameters that made the bundled datasets/NAME.csv (`make data` runs datasets/tools/gen_toys,
 * which writes each with qs_toy_generate and qs_dataset_write_csv). */
struct qs_toy_spec {
    const char *name;
    int n;
    double noise;
    uint64_t seed;
};

/* The bundled toy parameters, terminated by an entry with name NULL. */
const struct qs_toy_spec *qs_toy_bundled(void);

#endif
