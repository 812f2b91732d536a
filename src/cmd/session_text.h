/* session_text.h - what session.c, replay.c and autosave.c share (private to src/cmd): a session
 * or journal file as lines, the small I/O they all need, and the readings of a command line
 * that the session writer, --check and the journal make alike. */
#ifndef QSCOPE_SESSION_TEXT_H
#define QSCOPE_SESSION_TEXT_H

#include <stddef.h>
#include <string.h>

#include "qscope/cmd.h"

/* A file's text split into lines (session.c). */
struct qs_lines {
    char *buf;
    char **v; /* NUL-terminated lines without their newline */
    int n;
    int complete; /* the last line ended with a newline (or the file is empty) */
};

void qs_lines_free(struct qs_lines *l);
/* Splits buf (len bytes, one spare byte after them) in place; l owns buf afterwards, also after
 * a failure. 0, or -1 with a message. */
int qs_lines_from_text(char *buf, size_t len, struct qs_lines *l, qs_err *e);
/* A regular file's lines (a FIFO or device is refused; NUL bytes are refused). */
int qs_lines_read(const char *path, struct qs_lines *l, qs_err *e);
/* Reads fd to its end into a malloc'd, NUL-terminated *out. 0, or -1 with errno set. */
int qs_read_all_fd(int fd, char **out, size_t *len);
/* Writes all n bytes (EINTR retried). 0, or -1 with errno set. */
int qs_write_all(int fd, const char *s, size_t n);
int qs_is_comment_or_blank(const char *s);
int qs_starts_with(const char *s, const char *p);
/* The current time as "2025-01-31T12:00:00Z". */
void qs_iso_date(char *buf, size_t n);
/* qsort comparison of char * elements. */
int qs_cmp_str(const void *a, const void *b);

static inline int same_str(const char *a, const char *b)
{
    return !strcmp(a, b);
}

/* The file a journal line writes that a later `load` may read back: `export model PATH`,
 * `train ... out=PATH`; NULL for other lines. */
const char *qs_session_written_path(int argc, char **argv);
/* The input a line's words load: "model" for `load model|reference PATH` (a reference is pinned
 * as a model), "data" for `load data PATH` (PATH is argv[2]); NULL for other lines. */
const char *qs_session_load_kind(int argc, char **argv);

/* The paths a session's lines have written so far (qs_session_written_path), which a later load
 * reads back without a pin. */
struct qs_written {
    char **v;
    int n;
};
/* Remembers what the line writes, if anything (a path that does not fit in memory is forgotten:
 * its load is then reported unpinned, never trusted). */
void qs_written_add(struct qs_written *w, int argc, char **argv);
int qs_written_has(const struct qs_written *w, const char *path);
void qs_written_free(struct qs_written *w);

/* A journal line with the files it names made absolute (autosave.c). */
void qs_journal_line(const char *line, struct qs_sb *sb);
/* The value of the header line "# KEY VALUE" in a journal's text, cleaned to [0-9A-Za-z] (for a
 * file name), into buf; "" when there is none (autosave.c). */
void qs_header_word(const char *text, const char *key, char *buf, size_t n);

#endif
