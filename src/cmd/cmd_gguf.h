/* cmd_gguf.h - `load reference` and the `gguf` rule kind in quant and rules (private to src/cmd).
 */
#ifndef QSCOPE_CMD_GGUF_H
#define QSCOPE_CMD_GGUF_H

#include "qscope/cmd.h"

int qs_cmd_load_reference(struct qs_ctx *c, int argc, char **argv, qs_err *e);
/* quant PATTERN gguf: r becomes a rule of the paired GGUF's own weights (weights only, no
 * options). 0 or -1 and e (no pairing, options given). */
int qs_cmd_gguf_rule(struct qs_ctx *c, int argc, char **argv, struct qs_rule *r, qs_err *e);
/* After `quant` added rule 0 (not a gguf one) with a pairing: the sites it took from a `gguf`
 * rule below it, now re-quantized from the float reference, into o ("requantized") and t. */
void qs_cmd_gguf_quant_note(struct qs_ctx *c, cJSON *o, struct qs_sb *t);
/* `rules`, rule k of the gguf kind: its sites grouped by their GGUF type, into jr and t. */
void qs_cmd_gguf_rule_sites(struct qs_ctx *c, int k, cJSON *jr, struct qs_sb *t);

#endif
