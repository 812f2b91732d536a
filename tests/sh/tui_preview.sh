#!/usr/bin/env bash
# tui_preview.sh - a transformer's figures in stages in the TUI (src/tui/worker.c): the layers
# table and the selected site's spectrum before any forward pass, then a preview of every site's
# errors on the first 2 calibration windows, then the full figures; on the bundled tiny GPT-2,
# with the preview forced (QSCOPE_TUI_PREVIEW_MIN=0: its 1.2e5 parameters x 512 calibration
# tokens are far below the default threshold) and every stage held on screen until the test lets
# it go on (QSCOPE_TUI_PREVIEW_HOLD=FILE: the worker waits for FILE after each stage, then
# removes it). Checked: the spectrum shows while errors and eval are still computing; the
# preview's SNR column equals batch `set calib 2; error`, the full stage's equals batch `error`
# (so the preview left `set calib` and the full pass's caches as they were); the saved session
# holds nothing of the preview; a command typed while the stages run cancels them and its own
# figures come, and so does a key's (the preview's figures kept); without the forced threshold the
# tiny model gets no preview. Before all of these, the model named on the command line loads in
# the worker while the layers table already shows its sites from config.json (the first paint
# does not wait for the weights): the same rows batch `layers` lists, the load's command and
# progress on the status line; the loads are journaled (save session) but are not unsaved work
# (q quits at once); a load failing after the peek (a corrupt safetensors file) or cancelled with
# Ctrl-C leaves the TUI up with the error in the log. Waits poll the
# screen for a marker, never a fixed sleep. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
TEST=tui_preview
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh

M=datasets/models/tiny-gpt2
D=datasets/text/licenses.bin
GO=$TMP/go
if [ ! -d "$M" ] || [ ! -f "$D" ]; then
  echo "FAIL $TEST.fixture ($M, $D missing)"
  exit 1
fi

# "SITE SNR" lines, SNR as the layers table prints it (%.1f), from batch `error` after SETUP
snr_ref() {
  $Q --no-default --json -c "load model $M; load data $D; $1; error" 2>/dev/null |
    grep '"cmd":"error"' | grep -o '"name":"[^"]*","w_rel_err":[^,]*,"preact_rel_mse":[^,]*,"snr_db":[^,}]*' |
    sed 's/^"name":"\([^"]*\)".*"snr_db":\(.*\)$/\1 \2/' | awk '{ printf "%s %.1f\n", $1, $2 }'
}
# the same from the layers pane: its rows left of the first separator, SNR the column before
# the correction's ("-": none); the pane drops the columns it has no room for
snr_text() {
  sed -n '3,12p' | awk -F'│' '{ print $1 }' |
    awk '$1 ~ /^>?(h\.|lm_head)/ { n = $1; sub(/^>/, "", n); print n, $(NF - 1) }'
}
snr_screen() { screen "$1" | snr_text; }
go() { : >"$GO"; }
# the worker took the file: it has gone on to the next stage
gone() {
  for ((i = 0; i < 300; i++)); do
    [ -e "$GO" ] || return 0
    sleep 0.05
  done
  return 1
}
full_shown() { # SESSION: the task pane's eval figures, no preview marker, the worker idle
  local s=$1
  for ((i = 0; i < 600; i++)); do
    sc=$(screen "$s")
    if grep -q " ppl " <<<"$sc" && ! grep -q "preview:" <<<"$sc" && ! grep -q "running:" <<<"$sc"; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}
# wait_re SESSION ERE [SECONDS]: polls the screen until a line matches
wait_re() {
  local n=$(( ${3:-15} * 20 ))
  for ((i = 0; i < n; i++)); do
    screen "$1" | grep -qE -- "$2" && return 0
    sleep 0.05
  done
  return 1
}
# the spectrum pane (rows 13-24, left of its separator) has drawn its plot's footer
spectrum_footer() { screen "$1" | sed -n '13,24p' | awk -F'│' '{ print $1 $2 }' | grep -qE "$2"; }
# quick_stage SESSION ERE: one screen shows the first stage: errors and eval still computing,
# no SNR in the layers table, and the spectrum pane's footer matching ERE
quick_stage() {
  local sc
  for ((i = 0; i < 300; i++)); do
    sc=$(screen "$1")
    if grep -q "computing errors and eval" <<<"$sc" &&
       sed -n '13,24p' <<<"$sc" | awk -F'│' '{ print $1 $2 }' | grep -qE "$2" &&
       [ "$(snr_text <<<"$sc" | awk '$2 != "-"' | wc -l)" = 0 ] && [ "$(snr_text <<<"$sc" | wc -l)" = 9 ]; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}
wait_spectrum() {
  for ((i = 0; i < 300; i++)); do
    spectrum_footer "$1" "$2" && return 0
    sleep 0.05
  done
  return 1
}

ENVV="LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen QSCOPE_TUI_PREVIEW_MIN=0 QSCOPE_TUI_PREVIEW_HOLD=$GO"
s=qs-pv-$$
T new-session -d -s "$s" -x 100 -y 30 "env $ENVV $Q $M $D; echo qscope-exit=\$?"

# 0. before the weights: the table from config.json (the worker holds before the load), with
#    the sites batch `layers` lists, in order, each float
NAMES_REF=$($Q --no-default --json -c "load model $M; layers" 2>/dev/null | grep '"cmd":"layers"' |
  grep -o '"name":"[^"]*"' | sed 's/"name":"\(.*\)"/\1/')
names_screen() { screen "$1" | sed -n '3,12p' | awk -F'│' '{ print $1 }' | awk '$1 ~ /^>?(h\.|lm_head)/ { n = $1; sub(/^>/, "", n); print n, $2 }'; }
if wait_for "$s" "weights loading" 20 && wait_for "$s" "running: load model $M" 5 &&
   [ "$(names_screen "$s" | awk '{ print $1 }')" = "$NAMES_REF" ] &&
   [ "$(names_screen "$s" | awk '$2 != "float"' | wc -l)" = 0 ] && [ "$(wc -l <<<"$NAMES_REF")" = 9 ] &&
   screen "$s" | grep -q "loading the weights"; then
  pass "start.loading-table-from-config"
else
  fail "start.loading-table-from-config" "batch layers:" "$NAMES_REF" "$(screen "$s")"
fi
go

# 1. the first stage: the table and the first site's spectrum (float: no weight error), while
#    errors and eval are still to come
if gone && wait_for "$s" "Layers" 20 && quick_stage "$s" "no weight error"; then
  pass "start.quick-stage-spectrum"
else
  fail "start.quick-stage-spectrum" "$(screen "$s")"
fi
go
if gone && wait_for "$s" "preview: errors on 2/8 calib windows" 20 && wait_for "$s" "full pass" 5; then
  pass "start.preview-marker"
else
  fail "start.preview-marker" "$(screen "$s")"
fi
go
if gone && full_shown "$s"; then pass "start.full"; else fail "start.full" "$(screen "$s")"; fi

# 2. a format switch: its rows and spectrum at once, then the preview's errors (2 windows), then
#    the full figures, each equal to batch `error` on the same calibration
REF_PV=$(snr_ref "quant * int4; set calib 2")
REF_FULL=$(snr_ref "quant * int4")
if [ "$(wc -l <<<"$REF_FULL")" != 9 ] || [ "$REF_PV" = "$REF_FULL" ]; then
  fail "reference" "preview: $REF_PV" "full: $REF_FULL"
fi
cmd "$s" "quant * int4"
esc "$s"
if quick_stage "$s" "(MP|null) edge" && screen "$s" | grep -qE '^>h\.0\.attn\.c_attn +int4/'; then
  pass "switch.quick-stage-spectrum"
else
  fail "switch.quick-stage-spectrum" "$(screen "$s")"
fi
go
gone && wait_for "$s" "preview: errors on 2/8 calib windows" 20
got=$(snr_screen "$s")
if [ "$got" = "$REF_PV" ]; then
  pass "switch.preview-equals-batch-calib-2"
else
  fail "switch.preview-equals-batch-calib-2" "screen:" "$got" "batch (set calib 2; error):" "$REF_PV" "$(screen "$s")"
fi
go
gone && full_shown "$s"
got=$(snr_screen "$s")
if [ "$got" = "$REF_FULL" ]; then
  pass "switch.full-equals-batch"
else
  fail "switch.full-equals-batch" "screen:" "$got" "batch (error):" "$REF_FULL" "$(screen "$s")"
fi

# 3. `error` in the TUI afterwards uses the full calibration: the saved session records its
#    results, and a batch replay of it finds the same; the session holds nothing of the preview
cmd "$s" "error"
esc "$s"
wait_idle "$s" 60
cmd "$s" "save session $TMP/s.qs"
esc "$s"
if wait_file "$TMP/s.qs" && grep -q "^quant \* int4" "$TMP/s.qs" && grep -q "^error" "$TMP/s.qs" &&
   ! grep -q "^set calib" "$TMP/s.qs" && $Q --replay "$TMP/s.qs" --check >"$TMP/replay.out" 2>&1; then
  pass "error-after-preview-replays"
else
  fail "error-after-preview-replays" "$(cat "$TMP/s.qs" 2>/dev/null)" "$(cat "$TMP/replay.out" 2>/dev/null)"
fi

# 4. a command typed while the stages run (held at the first) cancels them; its own stages come
#    and end in its full figures
cmd "$s" "quant h.0.* int8"
esc "$s"
wait_for "$s" "computing errors and eval" 20
cmd "$s" "quant h.1.* int8"
esc "$s"
ok=0
if wait_re "$s" '^ h\.1\.mlp\.c_proj +int8' 20; then
  go
  gone && wait_for "$s" "preview:" 20 && go && gone && full_shown "$s" && ok=1
fi
got=$(snr_screen "$s")
REF2=$(snr_ref "quant * int4; quant h.0.* int8; quant h.1.* int8")
if [ $ok = 1 ] && [ "$got" = "$REF2" ]; then
  pass "new-command-cancels-stages"
else
  fail "new-command-cancels-stages" "screen:" "$got" "batch:" "$REF2" "$(screen "$s")"
fi
# 5. a key moving the selection while the preview is shown (the full pass to come) cancels the
#    stages; the new selection's spectrum comes with the preview's figures kept, then the full
cmd "$s" "quant * int6"
esc "$s"
wait_for "$s" "computing errors and eval" 20 && wait_spectrum "$s" "(MP|null) edge" && go && gone
ok=0
if wait_for "$s" "preview: errors on 2/8" 20; then
  pv=$(snr_screen "$s")
  T send-keys -t "$s" j
  if wait_re "$s" '^>h\.0\.attn\.c_proj ' 10 && wait_for "$s" "3 Spectrum 0.attn.c_proj" 20 &&
     wait_spectrum "$s" "(MP|null) edge" && wait_for "$s" "preview: errors on 2/8" 5 &&
     [ "$(snr_screen "$s")" = "$pv" ]; then
    go
    gone && wait_for "$s" "preview: errors on 2/8" 20 && go && gone && full_shown "$s" &&
      [ "$(snr_screen "$s")" = "$(snr_ref "quant * int4; quant h.0.* int8; quant h.1.* int8; quant * int6")" ] && ok=1
  fi
fi
if [ $ok = 1 ]; then pass "key-cancels-keeps-preview"; else fail "key-cancels-keeps-preview" "$(screen "$s")"; fi

T send-keys -t "$s" q
wait_for "$s" "quit anyway?" 10 && T send-keys -t "$s" y
wait_all "$s" "qscope-exit=0" 10 || fail "quit" "$(screen_all "$s")"
T kill-session -t "$s" >/dev/null 2>&1

# 6. the default threshold: the tiny model's full pass is cheap, no preview (one hold, then the
#    full figures)
s=qs-pv0-$$
rm -f "$GO"
T new-session -d -s "$s" -x 100 -y 30 \
  "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen QSCOPE_TUI_PREVIEW_HOLD=$GO $Q $M $D"
wait_for "$s" "weights loading" 20 && go && gone
if wait_for "$s" "computing errors and eval" 20 && wait_spectrum "$s" "no weight error" && go &&
   gone && full_shown "$s" && [ ! -e "$GO" ]; then
  pass "default-threshold-no-preview"
else
  fail "default-threshold-no-preview" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# 7. the loads from the command line are the session's first commands (save session keeps them,
#    and it replays), but not unsaved work: q quits at once
s=qs-pv7-$$
T new-session -d -s "$s" -x 100 -y 30 "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen $Q $M $D; echo qscope-exit=\$?"
full_shown "$s"
cmd "$s" "save session $TMP/boot.qs"
esc "$s"
if wait_file "$TMP/boot.qs" && [ "$(grep -v '^#' "$TMP/boot.qs" | grep -v '^$' | head -2)" = "load model $M
load data $D" ] && $Q --replay "$TMP/boot.qs" --check >"$TMP/boot.out" 2>&1; then
  pass "boot.loads-journaled"
else
  fail "boot.loads-journaled" "$(cat "$TMP/boot.qs" 2>/dev/null)" "$(cat "$TMP/boot.out" 2>/dev/null)"
fi
wait_idle "$s" 30
T send-keys -t "$s" q
if wait_all "$s" "qscope-exit=0" 10 && ! screen_all "$s" | grep -q "quit anyway"; then
  pass "boot.not-unsaved"
else
  fail "boot.not-unsaved" "$(screen_all "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# 8. a load failing after the peek: config.json is fine, model.safetensors is cut short; the TUI
#    stays up, the log says why, and no model is loaded
BAD=$TMP/bad-gpt2
mkdir -p "$BAD"
cp "$M/config.json" "$BAD/"
head -c 5000 "$M/model.safetensors" >"$BAD/model.safetensors"
ERR_REF=$($Q --no-default -c "load model $BAD" 2>&1 >/dev/null)
s=qs-pv8-$$
T new-session -d -s "$s" -x 100 -y 30 "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen $Q $BAD $D; echo qscope-exit=\$?"
if [ -n "$ERR_REF" ] && wait_for "$s" "no model: load model PATH" 20 &&
   screen "$s" | tr -d '\n' | grep -qF "error: ${ERR_REF#qscope: }"; then
  pass "boot.load-error-in-log"
else
  fail "boot.load-error-in-log" "batch: $ERR_REF" "$(screen "$s")"
fi
T send-keys -t "$s" q
wait_all "$s" "qscope-exit=0" 10 || fail "boot.load-error-quit" "$(screen_all "$s")"
T kill-session -t "$s" >/dev/null 2>&1

# 9. Ctrl-C while the model loads (held before its first tensor): the load stops, its data's
#    load is dropped, the TUI stays up without a model
s=qs-pv9-$$
rm -f "$GO"
T new-session -d -s "$s" -x 100 -y 30 \
  "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen QSCOPE_TUI_PREVIEW_HOLD=$GO $Q $M $D; echo qscope-exit=\$?"
wait_for "$s" "weights loading" 20
T send-keys -t "$s" C-c
if wait_for "$s" "no model: load model PATH" 20 && screen "$s" | grep -q "model.safetensors: cancelled" &&
   ! screen "$s" | grep -q "> load data"; then
  pass "boot.ctrl-c-cancels-load"
else
  fail "boot.ctrl-c-cancels-load" "$(screen "$s")"
fi
T send-keys -t "$s" q
wait_all "$s" "qscope-exit=0" 10 || fail "boot.cancel-quit" "$(screen_all "$s")"
T kill-session -t "$s" >/dev/null 2>&1

# 10. what the peek cannot vouch for loads before the screen, as before: data that is not a
#     readable file ends qscope with the load's message and status 1, no full screen
s=qs-pv10-$$
T new-session -d -s "$s" -x 100 -y 30 "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen $Q $M $TMP/missing.bin; echo qscope-exit=\$?"
if wait_all "$s" "qscope-exit=1" 20 && screen_all "$s" | grep -q "^qscope: .*missing.bin" &&
   ! screen_all "$s" | grep -q "Layers"; then
  pass "boot.unreadable-data-exits"
else
  fail "boot.unreadable-data-exits" "$(screen_all "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1
