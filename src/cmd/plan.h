/* plan.h - a study as a plan of independent jobs, one per setting, for GNU parallel or a Slurm
 * job array, and `study merge` (private to src/cmd).
 *
 * A plan folder DIR holds:
 *   plan.json           the study kind, its options, the settings (model, data, seed, SHA-256 of
 *                       model and data), the folder it was written from and the qscope binary;
 *   settings/NAME.qs    one session per setting: model and data pinned by SHA-256 in its header,
 *                       the study command of that one setting, writing results/NAME.json;
 *   run.sh              `sh run.sh NAME` runs one setting (skipped when its result is complete;
 *                       a failure leaves results/NAME.failed and logs/NAME.log);
 *   jobs.txt            one shell command per setting (`parallel < DIR/jobs.txt`);
 *   slurm.sbatch        a job array over jobs.txt (`sbatch DIR/slurm.sbatch`).
 * `study merge DIR` dispatches on plan.json's "study" (q1, q2). Another study kind plugs in as
 * q2 did: its command's plan= filling struct qs_plan_spec (.study = "KIND"; each setting's
 * command is then `study KIND models=ARG seeds=S COMMON... out=DIR/results/NAME.json`, so the
 * kind's command must take out=RECORD and write a JSON record holding "complete": true, which
 * run.sh looks for), and its merge function added to the table in plan.c, built on
 * qs_plan_state_*. */
#ifndef QSCOPE_PLAN_H
#define QSCOPE_PLAN_H

#include <limits.h>
#include <stdint.h>

#include "qscope/cmd.h"

struct qs_plan_setting {
    char name[128];       /* file-safe and unique: NNN-MODEL-sSEED */
    char arg[PATH_MAX];   /* the models= entry of its command */
    char model[PATH_MAX]; /* as the results name them */
    char data[PATH_MAX];
    uint64_t seed;
};

struct qs_plan_spec {
    const char *dir;
    const char *study; /* "q1": the command is `study q1` and the merge the q1 one */
    char **common;     /* option words every setting's command carries (format=, prec=, ...) */
    int ncommon;
    char **args; /* the study's option words as `study merge` parses them again */
    int nargs;
    int loaded_lm; /* the study was of the loaded transformer (no models=) */
    const struct qs_plan_setting *s;
    int n;
};

/* NNN-BASE-sSEED, BASE the model's file or folder name without .safetensors, file-safe. */
void qs_plan_name(int index, const char *model, uint64_t seed, char *buf, size_t n);

/* Writes the plan (the folder is made if missing; files of an earlier plan there are replaced,
 * results kept). Prints what it wrote and how to run it. 0, or -1 with a message. */
int qs_plan_write(struct qs_ctx *c, const struct qs_plan_spec *p, qs_err *e);

/* What a merge found for each setting. */
struct qs_plan_state {
    int n, ndone;
    char **missing; /* names (no result yet) */
    int nmissing;
    char **failed; /* "NAME (reason)" */
    int nfailed;
};
/* Records setting NAME as failed with REASON (a record that does not read, or results/NAME.failed
 * beside no record), or missing. */
void qs_plan_state_add(struct qs_plan_state *s, const char *dir, const char *name,
                       const char *reason);
/* The merge's header line(s) (prepended to the study's report) and JSON fields. */
void qs_plan_state_report(const struct qs_plan_state *s, const char *dir, cJSON *obj,
                          struct qs_sb *t);
void qs_plan_state_free(struct qs_plan_state *s);

/* The q1 merge (cmd_study.c): plan is plan.json; csv the prefix of the CSV files (NULL:
 * DIR/q1). */
int qs_study_q1_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e);

/* The q2 merge (cmd_study.c): the same, over q2 records (default CSV prefix DIR/q2). */
int qs_study_q2_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e);

int qs_cmd_study_merge(struct qs_ctx *c, int argc, char **argv, qs_err *e);

#endif
