/* study_record.h - a study's per-setting results as a file, for sweeps that run each setting as a
 * job of its own (`study q1 ... plan=DIR`, `study merge DIR`).
 *
 * A record is a JSON object: {"qscope_record": 1, "study": "q1", "version", "options", "settings":
 * [{setting fields..., "layers": [{layer fields...}]}], "complete": true}. Every number is
 * written with %.17g (a non-finite one as the string "nan", "inf" or "-inf"), so that reading it
 * back gives the same double bit for bit and a merged study reproduces the in-process one
 * exactly. "options" names the study's options (qs_q1_record_options); a merge refuses a record
 * written under other options. */
#ifndef QSCOPE_STUDY_RECORD_H
#define QSCOPE_STUDY_RECORD_H

#include <stddef.h>

#include "qscope/q2.h"
#include "qscope/study.h"

#define QS_RECORD_VERSION 1

/* The options a Q1 record was computed under, as one line (weight formats, map precision,
 * correctability share): equal lines, comparable records. */
void qs_q1_record_options(const struct qs_q1_opts *o, char *buf, size_t n);

/* Writes every setting of q (with its layer rows) to PATH through qs_outfile (a regular file is
 * replaced only once complete). 0, or -1 with a message naming the file. */
int qs_q1_record_write(const struct qs_q1 *q, const struct qs_q1_opts *o, const char *path,
                       qs_err *e);

/* Appends the settings and layer rows of the record at PATH to q (its aggregates untouched: call
 * qs_q1_aggregate once every record is in). options: the line the record must carry (NULL: any).
 * Returns 0; 1 when the file does not exist; -1 with a message when it is unreadable,
 * incomplete, malformed or of other options (q is then unchanged). */
int qs_q1_record_read(const char *path, const char *options, struct qs_q1 *q, qs_err *e);

/* Q2 records ("study": "q2"): each setting's figures, per-variant figures as objects keyed by
 * variant name, its sites (features, held-out MSE) and "sha256", a digest of every field of the
 * setting (each as exact text) that a reader recomputes: a record edited after it was written is
 * refused, as is one whose verdict does not follow from its figures. */
void qs_q2_record_options(const struct qs_q2_opts *o, char *buf, size_t n);
int qs_q2_record_write(const struct qs_q2_setting *s, int n, const struct qs_q2_opts *o,
                       const char *path, qs_err *e);
/* Appends the record's settings to q->settings (q->sum untouched: call qs_q2_aggregate once every
 * record is in). 0; 1 when the file does not exist; -1 with a message naming the file and why
 * (unreadable, incomplete, other options, malformed, edited); q is then unchanged. */
int qs_q2_record_read(const char *path, const char *options, struct qs_q2 *q, qs_err *e);

#endif
