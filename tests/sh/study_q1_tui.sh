#!/usr/bin/env bash
# study_q1_tui.sh - study q1 on a transformer in the TUI (issue 16): it runs as a job (the status
# line says so, with a progress bar), Ctrl-C cancels it between layers without leaving qscope,
# the prompt works afterwards, and a study left to finish prints its verdict line.
set -u
cd "$(dirname "$0")/../.."
TEST=study_q1_tui
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh

s=q1tui
if start "$s" "LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen" datasets/models/tiny-gpt2 datasets/text/licenses.txt; then
  cmd "$s" "study q1 seeds=0,1,2,3,4,5,6,7,8,9,10,11 calib_tokens=4096"
  if wait_for "$s" "running: study q1" 20; then
    T send-keys -t "$s" C-c
    if wait_for "$s" "study q1: cancelled" 60 && wait_idle "$s" 20; then
      cmd "$s" "study q1 seeds=0"
      if wait_for "$s" "gate pass in 1 of 1 settings" 60 && wait_idle "$s" 20 &&
        [ "$(T display-message -p -t "$s" '#{pane_dead}')" = 0 ]; then
        pass tui-cancel-then-run
      else
        fail tui-cancel-then-run "no study after the cancel" "$(screen "$s")"
      fi
    else
      fail tui-cancel-then-run "not cancelled" "$(screen "$s")"
    fi
  else
    fail tui-cancel-then-run "not run as a job" "$(screen "$s")"
  fi
else
  fail tui-cancel-then-run "qscope did not start" "$(screen "$s")"
fi
