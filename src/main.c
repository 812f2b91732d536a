/* main.c - command-line parsing; everything else goes through the dispatcher. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "qscope/cmd.h"
#include "qscope/front.h"
#include "qscope/lm.h"
#include "qscope/script.h"
#include "qscope/session.h"
#include "qscope/tui.h"

#ifndef QS_DATADIR
#define QS_DATADIR "/usr/local/share/qscope"
#endif

static const char usage[] =
    "usage: qscope [options] [MODEL [DATA]]\n"
    "       qscope roundtrip FORMAT [VALUE...]   (values from stdin when none are given)\n"
    "\n"
    "  (no arguments)          TUI on the bundled default model and data (REPL if not a tty)\n"
    "  -c 'CMD; CMD'           run commands headless and exit\n"
    "  -b SCRIPT.qs            run a script headless; the first error prints FILE:LINE: message\n"
    "  --replay S.qs           re-run a saved session\n"
    "     --check              compare every recorded result (exit 1 if any differs)\n"
    "     --tol R              relative tolerance for --check, 0..1 (default 1e-6)\n"
    "     --allow-writes       let the session write files (refused by default)\n"
    "     --deterministic      pin the thread count to 1 for bit-for-bit replays\n"
    "  --json                  results as JSON Lines on stdout\n"
    "  --repl                  readline REPL without the full-screen TUI\n"
    "  --no-default            start without the bundled model and data\n"
    "  --commands[=mdoc]       print the command table (name, synopsis, flags, help) and exit\n"
    "  --version | --help\n"
    "\n"
    "exit status: 0 success; 1 a command failed or a replay check differed; 2 bad usage\n";

/* The command table, one command a line: name, synopsis, flags and help separated by tabs, or
 * (mdoc) the manual's list heads, which tests/sh/manual.sh holds man/qscope.1 to. */
static void print_commands(int mdoc)
{
    struct qs_ctx c;
    qs_ctx_init(&c, NULL);
    c.extra = qs_tui_cmds;
    const struct qs_cmd_def *d;
    for (int i = 0; (d = qs_cmd_at(&c, i)); i++) {
        struct qs_sb sb = {0};
        if (mdoc) {
            qs_cmd_synopsis(d, QS_SYN_MDOC, &sb);
        } else {
            qs_sb_printf(&sb, "%s\t", d->name);
            qs_cmd_synopsis(d, QS_SYN_TEXT, &sb);
            qs_sb_printf(&sb, "\t");
            qs_cmd_flag_words(d->flags, &sb);
            qs_sb_printf(&sb, "\t%s", d->help);
        }
        if (sb.s)
            puts(sb.s);
        qs_sb_free(&sb);
    }
}

static int run_or_report(struct qs_ctx *c, const char *cmd, const char *where)
{
    qs_err e = {{0}};
    if (qs_exec_text(c, cmd, &e) < 0) {
        fprintf(stderr, "qscope: %s%s%s\n", where ? where : "", where ? ": " : "", e.msg);
        return -1;
    }
    return 0;
}

/* `qscope roundtrip FORMAT` with no values: read whitespace-separated values from stdin. */
static int roundtrip_stdin(struct qs_ctx *c, const char *fmt)
{
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "roundtrip %s", fmt);
    char tok[128];
    int n = 0;
    while (scanf("%127s", tok) == 1) {
        qs_sb_printf(&sb, " %s", tok);
        n++;
    }
    int rc = n ? run_or_report(c, sb.s, NULL) : (fprintf(stderr, "qscope: no values\n"), -1);
    qs_sb_free(&sb);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *cmds = NULL, *script = NULL, *replay = NULL;
    int json = 0, repl = 0, check = 0, deterministic = 0, no_default = 0, allow_writes = 0;
    double tol = 1e-6;
    qs_heap_tune();
    /* Options may come before or after the positional MODEL [DATA]; "--" ends options. There
     * are at most argc positional arguments (roundtrip's values). */
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int npos = 0, only_pos = 0;
    int tty = isatty(0) && isatty(1);
    struct qs_lm *skel = NULL; /* a transformer the TUI loads in its worker (below) */
    struct qs_sb boot = {0};
    if (!pos)
        return 1;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];
        if (only_pos || a[0] != '-' || !a[1]) {
            pos[npos++] = argv[k];
            if (npos == 1 && !strcmp(a, "roundtrip"))
                only_pos = 1; /* roundtrip's values may be negative numbers */
            continue;
        }
        if (!strcmp(a, "--"))
            only_pos = 1;
        else if (!strcmp(a, "-c") && k + 1 < argc)
            cmds = argv[++k];
        else if (!strcmp(a, "-b") && k + 1 < argc)
            script = argv[++k];
        else if (!strcmp(a, "--replay") && k + 1 < argc)
            replay = argv[++k];
        else if (!strcmp(a, "--check"))
            check = 1;
        else if (!strcmp(a, "--tol") && k + 1 < argc) {
            /* a relative tolerance: 1 already accepts any value of the right sign and size */
            const char *t = argv[++k];
            char *end;
            tol = strtod(t, &end);
            if (end == t || *end || !(tol >= 0 && tol <= 1)) {
                fprintf(stderr,
                        "qscope: --tol: '%s' is not a relative tolerance between 0 and 1 "
                        "(e.g. 1e-6)\n",
                        t);
                free(pos);
                return 2;
            }
        } else if (!strcmp(a, "--allow-writes"))
            allow_writes = 1;
        else if (!strcmp(a, "--deterministic"))
            deterministic = 1;
        else if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--repl"))
            repl = 1;
        else if (!strcmp(a, "--no-default"))
            no_default = 1;
        else if (!strcmp(a, "--commands") || !strcmp(a, "--commands=mdoc")) {
            print_commands(a[10] == '=');
            free(pos);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qscope %s\n", QS_VERSION);
            free(pos);
            return 0;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            free(pos);
            return 0;
        } else {
            fprintf(stderr, "qscope: unknown option '%s'\n%s", a, usage);
            free(pos);
            return 2;
        }
    }
    /* bundled files (the default model, sessions/..., datasets/...) resolve wherever qscope is
     * installed, through qs_bundle_path like every command's */
    qs_bundle_set_datadir(QS_DATADIR);
    char script_res[PATH_MAX], replay_res[PATH_MAX];
    if (script && script[0] != '/' &&
        qs_bundle_path(script, script_res, sizeof script_res, NULL) == 0)
        script = script_res;
    if (replay && replay[0] != '/' &&
        qs_bundle_path(replay, replay_res, sizeof replay_res, NULL) == 0)
        replay = replay_res;
    if (deterministic) /* OpenBLAS read its environment at load time: set the count directly */
        openblas_set_num_threads(1);

    if (allow_writes && !replay) {
        fprintf(stderr, "qscope: --allow-writes applies to --replay only\n%s", usage);
        free(pos);
        return 2;
    }
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    if (!b) {
        free(pos);
        return 1;
    }
    qs_ctx_init(&c, b);
    c.emit = qs_front_print;
    c.note = qs_front_note;
    c.u = &c;
    c.json = json;
    c.extra = qs_tui_cmds; /* so that `screenshot` outside the TUI says it needs the TUI */
    if (isatty(2)) {       /* long commands show progress; the TUI puts its own bar in its place */
        b->progress = qs_front_progress;
        b->progress_ctx = &c;
    }
    int status = 0;

    if (npos && !strcmp(pos[0], "roundtrip")) {
        if (npos < 2) {
            fprintf(stderr, "qscope: usage: qscope roundtrip FORMAT [VALUE...]\n");
            status = 2;
        } else if (npos == 2) {
            status = roundtrip_stdin(&c, pos[1]);
        } else {
            struct qs_sb sb = {0};
            for (int k = 0; k < npos; k++) {
                qs_sb_printf(&sb, "%s", k ? " " : "");
                qs_quote_sb(pos[k], &sb);
            }
            status = run_or_report(&c, sb.s, NULL) < 0 ? 1 : 0;
            qs_sb_free(&sb);
        }
        goto out;
    }

    if (replay) {
        /* safe mode, as sqlite3's -safe: someone else's session may not write files */
        c.safe = !allow_writes;
        status = qs_session_replay(&c, replay, check, tol);
        goto out;
    }

    /* The model and data: named on the command line, else the bundled default. */
    char bmodel[PATH_MAX], bdata[PATH_MAX];
    if (npos > 2) {
        fprintf(stderr, "qscope: too many arguments (MODEL [DATA])\n%s", usage);
        status = 2;
        goto out;
    }
    /* A transformer named for the TUI loads in its worker while the screen shows its sites from
     * its config (the first paint does not wait for the weights); anything the peek cannot
     * vouch for loads here first, as before, and a failure ends qscope with its message. */
    qs_err pe = {{0}};
    if (npos && tty && !repl && !cmds && !script &&
        qs_cmd_load_peek(pos[0], npos > 1 ? pos[1] : NULL, &skel, &pe) == 0) {
        for (int k = 0; k < npos; k++) {
            qs_sb_printf(&boot, "%sload %s ", k ? "; " : "", k ? "data" : "model");
            qs_quote_sb(pos[k], &boot);
        }
        if (!boot.s) {
            qs_lm_free(skel);
            skel = NULL;
        }
    }
    if (npos && !skel) {
        for (int k = 0; k < npos; k++) { /* quoted whatever the path holds, never cut */
            struct qs_sb cmd = {0};
            qs_sb_printf(&cmd, "load %s ", k ? "data" : "model");
            qs_quote_sb(pos[k], &cmd);
            int rc = cmd.s ? run_or_report(&c, cmd.s, NULL) : -1;
            qs_sb_free(&cmd);
            if (rc < 0) {
                status = 1;
                goto out;
            }
        }
    } else if (!npos && !no_default && !script &&
               qs_bundle_path("datasets/models/digits-mlp.safetensors", bmodel, sizeof bmodel,
                              NULL) == 0 &&
               qs_bundle_path("datasets/digits.csv", bdata, sizeof bdata, NULL) == 0) {
        char cmd[PATH_MAX * 2 + 64];
        snprintf(cmd, sizeof cmd, "load model '%s'; load data '%s'", bmodel, bdata);
        int saved = c.json;
        void (*emit)(void *, const cJSON *, const char *) = c.emit;
        c.emit = NULL; /* the default load is silent */
        if (run_or_report(&c, cmd, NULL) < 0) {
            status = 1;
            goto out;
        }
        c.emit = emit;
        c.json = saved;
    }

    if (cmds) {
        qs_err e = {{0}};
        if (qs_exec_text(&c, cmds, &e) < 0) {
            fprintf(stderr, "qscope: %s\n", e.msg);
            status = 1;
        }
    } else if (script) {
        qs_err e = {{0}};
        if (qs_run_script(&c, script, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            status = 1;
        }
    } else {
        qs_err ae = {{0}};
        if (qs_autosave_begin(&c, &ae) < 0) /* the session goes on without a journal */
            fprintf(stderr, "qscope: %s\n", ae.msg);
        status = tty && !repl ? qs_tui_run_loading(&c, skel, boot.s) : qs_repl_run(&c, tty);
        skel = NULL; /* the TUI's */
        qs_autosave_end(&c);
    }
out:
    qs_lm_free(skel);
    qs_sb_free(&boot);
    qs_ctx_free(&c);
    qs_bench_free(b);
    free(pos);
    return status;
}
