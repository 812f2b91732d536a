/* analysis_impl.h - what the analysis files (errors.c, spectrum.c, correct.c, ablate.c) share
 * and nothing else sees. */
#ifndef QSCOPE_ANALYSIS_IMPL_H
#define QSCOPE_ANALYSIS_IMPL_H

#include "qscope/bench.h"

/* Site i's output width. */
int qs_an_unit_out(const struct qs_bench *b, int i);
/* Site i's input rows on split sp along a path: an MLP's caches, a transformer's one-site row
 * cache (qs_bench_site_rows, within the activation budget). NULL with e on failure. */
const float *qs_an_site_x(struct qs_bench *b, int i, enum qs_split_id sp, int quant, int *n,
                          qs_err *e);

#endif
