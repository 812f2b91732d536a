/* cmd_fmt.h - how the sensitivity, allocate and study commands write a number cell and a
 * granularity (private to src/cmd). */
#ifndef QSCOPE_CMD_FMT_H
#define QSCOPE_CMD_FMT_H

#include <math.h>
#include <stdio.h>

#include "qscope/cmd.h"
#include "qscope/format.h"

/* FMT of v, or "n/a" for NaN, right-aligned in w columns. */
static inline void qs_cmd_put_num(struct qs_sb *t, int w, const char *fmt, double v)
{
    if (isfinite(v)) {
        char buf[48];
        snprintf(buf, sizeof buf, fmt, v);
        qs_sb_printf(t, "%*s", w, buf);
    } else {
        qs_sb_printf(t, "%*s", w, "n/a");
    }
}

/* The gran= word of o: "tensor", "channel" or "group:N" (buf holds the last). */
static inline const char *qs_cmd_gran_word(const struct qs_qopts *o, char *buf, size_t n)
{
    if (o->gran == QS_GRAN_TENSOR)
        return "tensor";
    if (o->gran == QS_GRAN_CHANNEL)
        return "channel";
    snprintf(buf, n, "group:%d", o->group);
    return buf;
}

#endif
