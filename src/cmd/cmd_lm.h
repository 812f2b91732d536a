/* cmd_lm.h - the transformer branches of the shared commands (private to src/cmd). */
#ifndef QSCOPE_CMD_LM_H
#define QSCOPE_CMD_LM_H

#include "qscope/analysis.h"
#include "qscope/cmd.h"

/* 1 if PATH names a transformer: a folder holding config.json. */
int qs_cmd_is_lm_path(const char *path);
/* PATH is journaled and reported as typed; FILE is where it resolved (qs_cmd_input_path). A
 * failure changes nothing (the load is staged). */
int qs_cmd_lm_load_model(struct qs_ctx *c, const char *path, const char *file, qs_err *e);
/* WIDTH: QS_TOK_AUTO/U16/U32 for raw .bin ids; .txt goes through the model folder's
 * tokenizer.json when there is one. */
int qs_cmd_lm_load_data(struct qs_ctx *c, const char *path, const char *file, int width, qs_err *e);
/* PATH as typed, or the bundled file it names when it is relative and not here (buf). */
const char *qs_cmd_input_path(const char *path, char *buf, size_t n);
void qs_cmd_lm_info(struct qs_ctx *c, cJSON *o, struct qs_sb *t);
int qs_cmd_lm_eval(struct qs_ctx *c, qs_err *e);
/* Adds "static_amax": {unit: scale} to an eval's JSON when some unit scales its activations
 * statically (either family), so that sessions journal the calibrated scales and --replay --check
 * compares them. */
void qs_cmd_json_static_amax(cJSON *o, const struct qs_bench *b);
int qs_cmd_lm_correct(struct qs_ctx *c, const int *idx, int n, enum qs_corr_method m, int rank,
                      const char *prec, double lambda, const char *opts, qs_err *e);
/* One row of the error table (name and the statistics both kinds of model have). */
cJSON *qs_cmd_error_row(const char *name, const struct qs_layer_err *r);
/* The result of `correct` on one layer or site, both families: the correction cr fitted there
 * (its method, rank, recoveries, size, the ridge map's figures) and the layer's bits per weight
 * with it; prec: whether "prec" is recorded (the transformer's low-rank results leave it out). */
cJSON *qs_cmd_correct_result(const char *name, const struct qs_corr *cr, double bpw, int prec);
void qs_cmd_lm_gate(struct qs_ctx *c, cJSON *obj, struct qs_sb *text);

#endif
