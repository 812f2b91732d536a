/* plan.c - a study as a plan of independent jobs (GNU parallel, Slurm) and `study merge`. */
#include "plan.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qscope/session.h"

void qs_plan_name(int index, const char *model, uint64_t seed, char *buf, size_t n)
{
    char base[96];
    size_t l = strlen(model);
    while (l > 1 && model[l - 1] == '/')
        l--;
    const char *s = model + l;
    while (s > model && s[-1] != '/')
        s--;
    size_t bl = (size_t)(model + l - s);
    const char *ext = ".safetensors";
    if (bl > strlen(ext) && !strncmp(s + bl - strlen(ext), ext, strlen(ext)))
        bl -= strlen(ext);
    if (bl >= sizeof base)
        bl = sizeof base - 1;
    for (size_t i = 0; i < bl; i++) {
        char ch = s[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '-' || ch == '_' || ch == '.';
        base[i] = ok ? ch : '_';
    }
    base[bl] = 0;
    snprintf(buf, n, "%03d-%s-s%llu", index, bl ? base : "model", (unsigned long long)seed);
}

/* 'WORD' for sh, any byte kept (a ' as '\''). */
static void sh_quote(const char *w, struct qs_sb *sb)
{
    qs_sb_printf(sb, "'");
    for (const char *p = w; *p; p++)
        qs_sb_printf(sb, *p == '\'' ? "'\\''" : "%c", *p);
    qs_sb_printf(sb, "'");
}

static int write_text(const char *dir, const char *name, const char *text, int exec, qs_err *e)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qs_outfile of;
    if (qs_out_open(&of, path, e) < 0)
        return -1;
    fputs(text, of.f);
    if (qs_out_commit(&of, e) < 0)
        return -1;
    if (exec)
        chmod(path, 0755);
    return 0;
}

/* One setting's session: model and data pinned, the session seed, the one-setting command. */
static int write_setting(struct qs_ctx *c, const struct qs_plan_spec *p,
                         const struct qs_plan_setting *s, const char *adir, qs_err *e)
{
    char mh[65], dh[65];
    if (qs_session_hash_path(s->model, mh, e) < 0 || qs_session_hash_path(s->data, dh, e) < 0)
        return qs_err_prefix(e, s->name);
    char date[32];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    struct qs_sb sb = {0}, w = {0};
    qs_sb_printf(&sb, "%s\n# version %s\n# date %s\n# seed %llu\n# threads %d\n", QS_SESSION_MAGIC,
                 QS_VERSION, date, (unsigned long long)c->b->seed, openblas_get_num_threads());
    qs_sb_printf(&sb, "# model %s sha256=%s\n# data %s sha256=%s\n", s->model, mh, s->data, dh);
    qs_sb_printf(&sb, "# plan %s, setting %s (written by study %s plan=; run by run.sh %s)\n", adir,
                 s->name, p->study, s->name);
    qs_sb_printf(&sb, "set seed %llu\nstudy %s models=", (unsigned long long)c->b->seed, p->study);
    qs_quote_sb(s->arg, &sb);
    qs_sb_printf(&sb, " seeds=%llu", (unsigned long long)s->seed);
    for (int k = 0; k < p->ncommon; k++) {
        qs_sb_printf(&sb, " ");
        qs_quote_sb(p->common[k], &sb);
    }
    qs_sb_printf(&w, "out=%s/results/%s.json", adir, s->name);
    qs_sb_printf(&sb, " ");
    qs_quote_sb(w.s, &sb);
    qs_sb_printf(&sb, "\n%s (2 commands)\n", QS_SESSION_END);
    char name[200];
    snprintf(name, sizeof name, "settings/%s.qs", s->name);
    int rc = sb.s ? write_text(adir, name, sb.s, 0, e) : qs_errf(e, "out of memory");
    qs_sb_free(&sb);
    qs_sb_free(&w);
    return rc;
}

int qs_plan_write(struct qs_ctx *c, const struct qs_plan_spec *p, qs_err *e)
{
    char adir[PATH_MAX], cwd[PATH_MAX], exe[PATH_MAX];
    if (qs_mkdir_p(p->dir) < 0)
        return qs_errf(e, "plan=%s: cannot make the folder: %s", p->dir, strerror(errno));
    if (!realpath(p->dir, adir) || !getcwd(cwd, sizeof cwd))
        return qs_errf(e, "plan=%s: %s", p->dir, strerror(errno));
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    snprintf(exe + (el > 0 ? el : 0), sizeof exe - (size_t)(el > 0 ? el : 0), "%s",
             el > 0 ? "" : "qscope");
    const char *sub[] = {"settings", "results", "logs"};
    for (int k = 0; k < 3; k++) {
        char d[PATH_MAX + 16];
        snprintf(d, sizeof d, "%s/%s", adir, sub[k]);
        if (qs_mkdir_p(d) < 0)
            return qs_errf(e, "plan: cannot make %s: %s", d, strerror(errno));
    }
    for (int i = 0; i < p->n; i++)
        if (write_setting(c, p, &p->s[i], adir, e) < 0)
            return -1;
    int threads = openblas_get_num_threads();
    /* plan.json: what `study merge` needs, and what a reader wants to know */
    cJSON *j = cJSON_CreateObject(), *ja = cJSON_CreateArray(), *js = cJSON_CreateArray();
    cJSON_AddNumberToObject(j, "qscope_plan", 1);
    cJSON_AddStringToObject(j, "study", p->study);
    cJSON_AddStringToObject(j, "version", QS_VERSION);
    cJSON_AddStringToObject(j, "cwd", cwd);
    cJSON_AddStringToObject(j, "qscope", exe);
    cJSON_AddNumberToObject(j, "threads", threads);
    cJSON_AddNumberToObject(j, "seed", (double)c->b->seed);
    cJSON_AddBoolToObject(j, "loaded_lm", p->loaded_lm);
    for (int k = 0; k < p->nargs; k++)
        cJSON_AddItemToArray(ja, cJSON_CreateString(p->args[k]));
    cJSON_AddItemToObject(j, "args", ja);
    for (int i = 0; i < p->n; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", p->s[i].name);
        cJSON_AddStringToObject(x, "model", p->s[i].model);
        cJSON_AddStringToObject(x, "data", p->s[i].data);
        cJSON_AddNumberToObject(x, "seed", (double)p->s[i].seed);
        cJSON_AddItemToArray(js, x);
    }
    cJSON_AddItemToObject(j, "settings", js);
    char *pj = cJSON_Print(j);
    cJSON_Delete(j);
    struct qs_sb run = {0}, jobs = {0}, sl = {0};
    /* run.sh NAME: one setting, from the folder the plan was written in */
    qs_sb_printf(&run,
                 "#!/bin/sh\n"
                 "# run.sh NAME - one setting of this plan (qscope study %s plan=), run from the "
                 "folder the\n"
                 "# plan was written in. A setting whose result is complete exits 0 at once; "
                 "else its session\n"
                 "# (settings/NAME.qs, model and data pinned by SHA-256) is replayed, its log "
                 "goes to\n"
                 "# logs/NAME.log and a failure leaves results/NAME.failed. QSCOPE=PATH "
                 "chooses the binary.\n"
                 "set -u\n"
                 "[ $# -eq 1 ] || { echo 'usage: run.sh NAME' >&2; exit 2; }\n"
                 "name=$1\n"
                 "plan=",
                 p->study);
    sh_quote(adir, &run);
    qs_sb_printf(&run, "\nres=\"$plan/results/$name.json\"\n"
                       "done_() { [ -f \"$res\" ] && grep -q '\"complete\":[[:space:]]*true' "
                       "\"$res\"; }\n"
                       "if done_; then echo \"$name: finished already\"; exit 0; fi\n"
                       "[ -f \"$plan/settings/$name.qs\" ] || { echo \"$name: no such setting "
                       "in $plan\" >&2; exit 2; }\n"
                       "mkdir -p \"$plan/results\" \"$plan/logs\"\n"
                       "rm -f \"$plan/results/$name.failed\"\n"
                       "cd ");
    sh_quote(cwd, &run);
    qs_sb_printf(&run, " || exit 1\nOPENBLAS_NUM_THREADS=%d \"${QSCOPE:-", threads);
    for (const char *q = exe; *q; q++) /* inside double quotes */
        qs_sb_printf(&run, strchr("\"$`\\", *q) ? "\\%c" : "%c", *q);
    qs_sb_printf(&run, "}\" --replay \"$plan/settings/$name.qs\" --allow-writes "
                       ">\"$plan/logs/$name.log\" 2>&1\n"
                       "rc=$?\n"
                       "if [ $rc -eq 0 ] && done_; then echo \"$name: done\"; exit 0; fi\n"
                       "{ echo \"exit $rc\"; grep -v '^replay:' \"$plan/logs/$name.log\" | "
                       "tail -n 3; } >\"$plan/results/$name.failed\"\n"
                       "echo \"$name: FAILED (exit $rc), see $plan/logs/$name.log\" >&2\n"
                       "exit 1\n");
    for (int i = 0; i < p->n; i++) {
        qs_sb_printf(&jobs, "sh ");
        struct qs_sb r = {0};
        qs_sb_printf(&r, "%s/run.sh", adir);
        sh_quote(r.s ? r.s : "", &jobs);
        qs_sb_free(&r);
        qs_sb_printf(&jobs, " %s\n", p->s[i].name);
    }
    qs_sb_printf(&sl,
                 "#!/bin/bash\n"
                 "# slurm.sbatch - this plan as a Slurm job array: sbatch slurm.sbatch (from "
                 "anywhere);\n"
                 "# array task i runs line i+1 of jobs.txt. Finished settings exit at once, so "
                 "resubmitting\n"
                 "# runs only what is missing or failed; then: qscope -c 'study merge DIR'.\n"
                 "#SBATCH --job-name=qscope-%s\n"
                 "#SBATCH --array=0-%d\n"
                 "#SBATCH --ntasks=1\n"
                 "#SBATCH --cpus-per-task=%d\n"
                 "#SBATCH --output=%s/logs/slurm-%%A_%%a.out\n"
                 "set -u\n"
                 "line=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" ",
                 p->study, p->n - 1, threads, adir);
    struct qs_sb jp = {0};
    qs_sb_printf(&jp, "%s/jobs.txt", adir);
    sh_quote(jp.s ? jp.s : "", &sl);
    qs_sb_free(&jp);
    qs_sb_printf(&sl, ")\n[ -n \"$line\" ] || { echo \"no line $((SLURM_ARRAY_TASK_ID + 1)) in "
                      "jobs.txt\" >&2; exit 2; }\n"
                      "exec bash -c \"$line\"\n");
    int rc = 0;
    if (!pj || !run.s || !jobs.s || !sl.s)
        rc = qs_errf(e, "out of memory");
    else if (write_text(adir, "plan.json", pj, 0, e) < 0 ||
             write_text(adir, "run.sh", run.s, 1, e) < 0 ||
             write_text(adir, "jobs.txt", jobs.s, 0, e) < 0 ||
             write_text(adir, "slurm.sbatch", sl.s, 1, e) < 0)
        rc = -1;
    free(pj);
    qs_sb_free(&run);
    qs_sb_free(&jobs);
    qs_sb_free(&sl);
    if (rc < 0)
        return rc;
    struct qs_sb t = {0};
    cJSON *o = cJSON_CreateObject(), *jn = cJSON_CreateArray();
    char title[32];
    snprintf(title, sizeof title, "study %s", p->study);
    cJSON_AddStringToObject(o, "cmd", title);
    cJSON_AddStringToObject(o, "plan", adir);
    cJSON_AddNumberToObject(o, "jobs", p->n);
    for (int i = 0; i < p->n; i++)
        cJSON_AddItemToArray(jn, cJSON_CreateString(p->s[i].name));
    cJSON_AddItemToObject(o, "settings", jn);
    qs_sb_printf(&t,
                 "study %s plan: %d setting%s in %s (settings/NAME.qs, one session each, model and "
                 "data pinned by SHA-256; %d BLAS thread%s a job)\n",
                 p->study, p->n, p->n == 1 ? "" : "s", adir, threads, threads == 1 ? "" : "s");
    for (int i = 0; i < p->n; i++)
        qs_sb_printf(&t, "  %s  %s seed %llu\n", p->s[i].name, p->s[i].model,
                     (unsigned long long)p->s[i].seed);
    qs_sb_printf(&t,
                 "run: parallel -j N < %s/jobs.txt   (other machines: --sshloginfile FILE; the "
                 "paths must be the same there)\n"
                 "     sbatch %s/slurm.sbatch        (a Slurm job array, one task a setting)\n"
                 "then: study merge %s   (finished settings are skipped when run again)",
                 adir, adir, p->dir);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- merge --------------------------------------------------------------------------------- */

static void push(char ***v, int *n, const char *s)
{
    char **nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
    if (!nv)
        return;
    *v = nv;
    nv[*n] = qs_strdup(s);
    if (nv[*n])
        (*n)++;
}

void qs_plan_state_add(struct qs_plan_state *s, const char *dir, const char *name,
                       const char *reason)
{
    char path[PATH_MAX + 200], line[600] = "";
    snprintf(path, sizeof path, "%s/results/%s.failed", dir, name);
    FILE *f = reason ? NULL : fopen(path, "r");
    if (f) { /* "exit N" and the log's last lines: the first and the last of them */
        char buf[300], last[300] = "";
        int k = 0;
        while (fgets(buf, sizeof buf, f)) {
            buf[strcspn(buf, "\n")] = 0;
            if (k++ == 0)
                snprintf(line, sizeof line, "%s", buf);
            else if (buf[0])
                snprintf(last, sizeof last, "%s", buf);
        }
        fclose(f);
        if (last[0])
            snprintf(line + strlen(line), sizeof line - strlen(line), ": %s", last);
        reason = line[0] ? line : "failed";
    }
    if (reason) {
        char clean[600], item[800];
        snprintf(item, sizeof item, "%s (%s)", name,
                 qs_clean_str(reason, clean, sizeof clean, 300));
        push(&s->failed, &s->nfailed, item);
    } else {
        push(&s->missing, &s->nmissing, name);
    }
}

void qs_plan_state_report(const struct qs_plan_state *s, const char *dir, cJSON *obj,
                          struct qs_sb *t)
{
    qs_sb_printf(t, "study merge %s: %d of %d settings finished", dir, s->ndone, s->n);
    if (s->nmissing || s->nfailed)
        qs_sb_printf(t, " (%d missing, %d failed: the figures below are over the finished ones)",
                     s->nmissing, s->nfailed);
    qs_sb_printf(t, "\n");
    if (s->nmissing) {
        qs_sb_printf(t, "missing (no result yet):");
        for (int i = 0; i < s->nmissing; i++)
            qs_sb_printf(t, " %s", s->missing[i]);
        qs_sb_printf(t, "\n");
    }
    for (int i = 0; i < s->nfailed; i++)
        qs_sb_printf(t, "failed: %s\n", s->failed[i]);
    cJSON *m = cJSON_CreateArray(), *f = cJSON_CreateArray();
    for (int i = 0; i < s->nmissing; i++)
        cJSON_AddItemToArray(m, cJSON_CreateString(s->missing[i]));
    for (int i = 0; i < s->nfailed; i++)
        cJSON_AddItemToArray(f, cJSON_CreateString(s->failed[i]));
    cJSON_AddStringToObject(obj, "plan", dir);
    cJSON_AddNumberToObject(obj, "settings_planned", s->n);
    cJSON_AddNumberToObject(obj, "settings_finished", s->ndone);
    cJSON_AddItemToObject(obj, "missing", m);
    cJSON_AddItemToObject(obj, "failed", f);
}

void qs_plan_state_free(struct qs_plan_state *s)
{
    for (int i = 0; i < s->nmissing; i++)
        free(s->missing[i]);
    for (int i = 0; i < s->nfailed; i++)
        free(s->failed[i]);
    free(s->missing);
    free(s->failed);
    memset(s, 0, sizeof *s);
}

/* The study kinds a plan can hold: `study merge` runs the kind's own merge. */
static const struct {
    const char *study;
    int (*merge)(struct qs_ctx *, const char *, const cJSON *, const char *, qs_err *);
} merges[] = {
    {"q1", qs_study_q1_merge},
    {"q2", qs_study_q2_merge},
};

int qs_cmd_study_merge(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    const char *csv = NULL;
    if (argc == 2) /* DIR [csv=PREFIX] (the spec) */
        csv = qs_opt_value(argv[1], "csv");
    const char *dir = argv[0];
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/plan.json", dir);
    FILE *f = qs_fopen_regular(path, "plan", e);
    if (!f)
        return qs_err_prefix(e, "study merge");
    struct qs_sb sb = {0};
    char buf[8192];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0)
        qs_sb_printf(&sb, "%.*s", (int)k, buf);
    fclose(f);
    cJSON *pj = sb.s ? cJSON_Parse(sb.s) : NULL;
    qs_sb_free(&sb);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(pj, "study");
    if (!pj || !cJSON_IsString(st)) {
        cJSON_Delete(pj);
        return qs_errf(e, "study merge: %s is not a qscope plan (written by study ... plan=DIR)",
                       path);
    }
    int rc = -2;
    for (size_t i = 0; i < sizeof merges / sizeof *merges && rc == -2; i++)
        if (!strcmp(merges[i].study, st->valuestring))
            rc = merges[i].merge(c, dir, pj, csv, e);
    if (rc == -2)
        rc = qs_errf(e, "study merge: %s: a plan of study %s, which this qscope cannot merge", path,
                     st->valuestring);
    cJSON_Delete(pj);
    if (rc == 0) {
        char qd[PATH_MAX], qc[PATH_MAX];
        snprintf(c->canon, sizeof c->canon, "study merge %s%s%s", qs_quote(dir, qd, sizeof qd),
                 csv ? " csv=" : "", csv ? qs_quote(csv, qc, sizeof qc) : "");
    }
    return rc;
}
