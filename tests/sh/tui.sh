#!/usr/bin/env bash
# tui.sh - the full-screen TUI driven through tmux (which provides the terminal): pane titles
# and layers, a typed command changing the tables, a key binding journaled into the saved
# session, resizing to 80x24 and back, Ctrl-C cancelling a long job, the help overlay, the 2-D
# decision regions, `screenshot` against tmux's own capture, a whole-screen golden, and q (or a
# fatal signal) restoring the terminal. Every check runs three times: UTF-8, LANG=C (ASCII
# fallback) and NO_COLOR=1. Then once: names from a hostile model file drawn as text, a key on a
# layer whose name needs quoting, `screenshot` onto a FIFO / over a file / onto a device, and
# the line REPL (--repl) in a terminal: Ctrl-C at the prompt and during a job, `quit` asking.
# Waits poll the screen for a marker with a timeout, never a fixed sleep. Run from the repo
# root (or anywhere: it changes there). Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
TEST=tui
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh

# The model: the bundled default when it exists, else one trained here (same layer names).
if [ -f datasets/models/digits-mlp.safetensors ]; then
  MODEL_ARGS=""
else
  $Q --no-default -c "load data datasets/digits.csv; train hidden=64,64 epochs=30 out=$TMP/digits.safetensors" >/dev/null 2>&1
  MODEL_ARGS="$TMP/digits.safetensors datasets/digits.csv"
fi
if [ -f datasets/models/moons-mlp.safetensors ]; then
  MOONS_ARGS="datasets/models/moons-mlp.safetensors datasets/moons.csv"
else
  $Q --no-default -c "load data datasets/moons.csv; train hidden=16,16 epochs=200 lr=0.01 out=$TMP/moons.safetensors" >/dev/null 2>&1
  MOONS_ARGS="$TMP/moons.safetensors datasets/moons.csv"
fi
# shellcheck disable=SC2086
mapfile -t LAYERS < <($Q --json -c layers $MODEL_ARGS 2>/dev/null | grep -o '"name":"[^"]*"' | cut -d'"' -f4)
if [ ${#LAYERS[@]} -lt 1 ]; then
  echo "FAIL tui.model (cannot list the model's layers)"
  exit 1
fi
L1=${LAYERS[$(( ${#LAYERS[@]} > 1 ? 1 : 0 ))]}
# shellcheck disable=SC2086
M0=$($Q --json -c layers $MOONS_ARGS 2>/dev/null | grep -o '"name":"[^"]*"' | head -1 | cut -d'"' -f4)

titles_ok() { # SESSION [extra title]
  local sc missing=""
  sc=$(screen "$1")
  for t in "1 Layers" "2 Task" "3 Spectrum" "4 Rank profile" "5 Corrections" "7 Log" ${2:+"$2"}; do
    grep -qF -- "$t" <<<"$sc" || missing="$missing [$t]"
  done
  [ -z "$missing" ] || { echo "missing titles:$missing"; return 1; }
}
# The panes' key hint on the last row; qscope clips it to the terminal's width minus one column.
HINT=": command  ? help  q quit  j/k layer  +/- bits  f format  c correct  a ablate  Tab focus  z zoom"
# wait_layout SESSION W H [SECONDS]: back in the panes, polls until qscope itself has drawn its
# layout for a WxH terminal: the hint, clipped to W-1 columns, on row H. A screen of the new size
# is not enough: tmux resizes its own grid at once, but tells the program (the pty's size and
# SIGWINCH) up to 250 ms later (its resize timer), so for a while the grid still holds the old
# layout, and a command typed then runs at the old size.
wait_layout() {
  local s=$1 w=$2 h=$3 n=$(( ${4:-15} * 20 )) want sc
  want=${HINT:0:$((w - 1))}
  want=${want%"${want##*[! ]}"}
  esc "$s"
  for ((i = 0; i < n; i++)); do
    sc=$(screen "$s")
    [ "$(wc -l <<<"$sc")" = "$h" ] && [ "$(sed -n "${h}p" <<<"$sc" | sed 's/ *$//')" = "$want" ] && return 0
    sleep 0.05
  done
  return 1
}
task_line() { screen "$1" | grep -oE '(bits/weight|quant +[0-9.]+ +[0-9.]+)' | tr '\n' ' '; }

VARIANTS=("utf8:LANG=C.UTF-8 LC_ALL=C.UTF-8" "ascii:LANG=C LC_ALL=C" "nocolor:LANG=C.UTF-8 LC_ALL=C.UTF-8 NO_COLOR=1")

for v in "${VARIANTS[@]}"; do
  tag=${v%%:*}
  env="${v#*:} TERM=screen"
  s="qs-$tag-$$"
  if ! start "$s" "$env" "$MODEL_ARGS"; then
    fail "$tag.start" "$(screen "$s")"
    T kill-session -t "$s" >/dev/null 2>&1
    continue
  fi

  # 1. pane titles and the model's layers
  miss=""
  for l in "${LAYERS[@]}"; do screen "$s" | grep -qE "^[ >]$l " || miss="$miss $l"; done
  if msg=$(titles_ok "$s") && [ -z "$miss" ]; then pass "$tag.titles-and-layers"
  else fail "$tag.titles-and-layers" "$msg" "layers missing:$miss"; fi

  # 2. a typed command changes the layers table and the task pane
  before=$(task_line "$s")
  cmd "$s" "quant * int4"
  ok=1
  wait_for "$s" "* -> int4: " 15 && wait_idle "$s" || ok=0
  for l in "${LAYERS[@]}"; do screen "$s" | grep -qE "^[ >]$l .*int4/" || ok=0; done
  after=$(task_line "$s")
  if [ $ok = 1 ] && [ -n "$after" ] && [ "$before" != "$after" ] && screen "$s" | grep -q "weight-only"; then
    pass "$tag.quant-changes-tables"
  else
    fail "$tag.quant-changes-tables" "before: $before" "after: $after" "$(screen "$s")"
  fi

  # 3. key bindings: j selects the next layer, '-' takes one bit off, 'f' cycles the format;
  #    each is journaled and lands in the saved session
  esc "$s"
  [ "$L1" != "${LAYERS[0]}" ] && T send-keys -t "$s" j
  wait_for "$s" ">$L1 " 5
  T send-keys -t "$s" -- -
  wait_for "$s" "> quant $L1 int3" 10 && wait_idle "$s"
  T send-keys -t "$s" f
  wait_for "$s" "> quant $L1 int2" 10 && wait_idle "$s"
  cmd "$s" "save session $TMP/$tag.qs"
  if wait_file "$TMP/$tag.qs" && screen "$s" | grep -qE "^[ >]$L1 .*int2/" &&
     grep -q "^quant $L1 int3 gran=tensor" "$TMP/$tag.qs" && grep -q "^quant $L1 int2 gran=channel" "$TMP/$tag.qs"; then
    pass "$tag.key-binding-journaled"
  else
    fail "$tag.key-binding-journaled" "$(cat "$TMP/$tag.qs" 2>/dev/null)" "$(screen "$s")"
  fi

  # 4. resize to 80x24 and back: qscope lays the panes out again (waited for: its own layout of
  #    that size on screen), and every pane title stays visible
  T resize-window -t "$s" -x 80 -y 24
  lay_small=0; wait_layout "$s" 80 24 && lay_small=1
  wait_idle "$s"
  small=$(titles_ok "$s"); rs=$?
  smallw=$(screen "$s" | awk '{ if (length($0) > m) m = length($0) } END { print m }')
  T resize-window -t "$s" -x 100 -y 30
  lay_big=0; wait_layout "$s" 100 30 && lay_big=1
  wait_idle "$s"
  big=$(titles_ok "$s"); rb=$?
  rows=$(screen "$s" | wc -l)
  if [ $lay_small = 1 ] && [ $lay_big = 1 ] && [ $rs = 0 ] && [ $rb = 0 ] && [ "$rows" = 30 ]; then
    pass "$tag.resize-80x24-and-back"
  else
    fail "$tag.resize-80x24-and-back" "laid out: 80x24 $lay_small, 100x30 $lay_big" \
      "80x24: $small (width $smallw)" "100x30: $big ($rows rows)" "$(screen "$s")"
  fi

  # 5. screenshot writes the whole screen as text: the same as tmux's capture
  cmd "$s" "screenshot $TMP/$tag.shot"
  esc "$s"
  if wait_file "$TMP/$tag.shot"; then
    shown=1
    wait_for "$s" "screenshot $TMP/$tag.shot (100x30)" 5 || shown=0
    # the panes above the log are unchanged since the shot (the log and status moved on)
    a=$(head -n 12 "$TMP/$tag.shot" | sed 's/ *$//')
    b=$(screen "$s" | head -n 12 | sed 's/ *$//')
    if [ "$(wc -l <"$TMP/$tag.shot")" = 30 ] && [ "$a" = "$b" ] && [ $shown = 1 ]; then
      pass "$tag.screenshot-matches-screen"
    else
      fail "$tag.screenshot-matches-screen" "$(diff <(echo "$a") <(echo "$b"))"
    fi
  else
    fail "$tag.screenshot-matches-screen" "no file" "$(screen "$s")"
  fi

  # 6. the help overlay lists keys and, a page down (Space), the command table; Esc closes it
  T send-keys -t "$s" '?'
  if wait_for "$s" "Keys in the panes" 5 && T send-keys -t "$s" Space &&
     wait_for "$s" "load model PATH" 5; then
    T send-keys -t "$s" Escape
    if wait_for "$s" "1 Layers" 5; then pass "$tag.help-overlay"; else fail "$tag.help-overlay" "did not close"; fi
  else
    fail "$tag.help-overlay" "$(screen "$s")"
  fi

  # 7. Ctrl-C cancels a long job without leaving; the prompt still works afterwards
  cmd "$s" "train epochs=100000"
  if wait_for "$s" "running: train" 10 && wait_for "$s" "epoch 1" 20; then
    T send-keys -t "$s" C-c
    if wait_for "$s" "cancelled after epoch" 20 && wait_idle "$s" 10; then
      T send-keys -t "$s" -l -- "info"
      T send-keys -t "$s" Enter
      if wait_for "$s" "split   rows, seed" 10 && [ "$(T display-message -p -t "$s" '#{pane_dead}')" = 0 ]; then
        pass "$tag.ctrl-c-cancels-job"
      else
        fail "$tag.ctrl-c-cancels-job" "prompt dead after cancel" "$(screen "$s")"
      fi
    else
      fail "$tag.ctrl-c-cancels-job" "not cancelled" "$(screen "$s")"
    fi
  else
    fail "$tag.ctrl-c-cancels-job" "train did not start" "$(screen "$s")"
  fi

  # 8. q asks when work is unsaved, y quits, and the terminal is restored
  esc "$s"
  T send-keys -t "$s" f            # one more journaled change after the save
  wait_for "$s" "> quant $L1 " 10
  wait_idle "$s"
  T send-keys -t "$s" q
  if wait_for "$s" "quit anyway? (y/n)" 5; then
    T send-keys -t "$s" y
    # the shell's line shows on the normal screen: curses has left the alternate screen
    if wait_all "$s" "qscope-exit=0" 10 && [ "$(T display-message -p -t "$s" '#{alternate_on}')" = 0 ]; then
      pass "$tag.q-quits-and-restores"
    else
      fail "$tag.q-quits-and-restores" "$(T display-message -p -t "$s" 'alternate_on=#{alternate_on} history=#{history_size} cursor=#{cursor_y}')" "$(T capture-pane -p -S -200 -t "$s" | grep -v '^$')"
    fi
  else
    fail "$tag.q-quits-and-restores" "no y/n question" "$(screen "$s")"
  fi
  T kill-session -t "$s" >/dev/null 2>&1

  # 9. a 2-D toy: decision regions of float / quantized / corrected
  s="qs-$tag-2d-$$"
  if start "$s" "$env" "$MOONS_ARGS"; then
    cmd "$s" "quant * int2 gran=channel; correct $M0 linear"
    if wait_for "$s" "$M0 linear R=" 20 && wait_idle "$s" && titles_ok "$s" "6 Decision regions" >/dev/null &&
       screen "$s" | grep -qE "float [0-9.]+%.*quantized [0-9.]+%.*corrected [0-9.]+%"; then
      pass "$tag.lowdim-decision-regions"
    else
      fail "$tag.lowdim-decision-regions" "$(screen "$s")"
    fi
    # a fatal signal restores the terminal too (the handler calls endwin, then re-raises)
    kill -TERM "$(qscope_pid "$s")" 2>/dev/null
    if wait_all "$s" "qscope-exit=143" 10 && [ "$(T display-message -p -t "$s" '#{alternate_on}')" = 0 ]; then
      pass "$tag.signal-restores-terminal"
    else
      fail "$tag.signal-restores-terminal" "$(T display-message -p -t "$s" 'alternate_on=#{alternate_on}')" "$(screen "$s")"
    fi
  else
    fail "$tag.lowdim-decision-regions" "$(screen "$s")"
  fi
  T kill-session -t "$s" >/dev/null 2>&1
done

# A whole-screen golden: the TUI without a model, 80x24, ASCII, no colour (nothing in it
# depends on a model, the machine or the numbers).
s="qs-golden-$$"
T new-session -d -s "$s" -x 80 -y 24 -c "$TMP" "exec env XDG_STATE_HOME=$TMP/golden-state LANG=C LC_ALL=C NO_COLOR=1 TERM=screen $QABS --no-default"
if wait_for "$s" "no model: load model PATH" 15; then
  cmd "$s" "screenshot empty.shot" # relative to $TMP: the log line is the same on every run
  wait_file "$TMP/empty.shot"
  # QSCOPE_UPDATE_GOLDEN=1 rewrites the golden after a deliberate change of the screen
  [ "${QSCOPE_UPDATE_GOLDEN:-0}" = 1 ] && cp "$TMP/empty.shot" tests/golden/tui_empty.out
  if diff -u tests/golden/tui_empty.out "$TMP/empty.shot" >"$TMP/golden.diff"; then
    pass "golden-empty-screen"
  else
    fail "golden-empty-screen" "$(cat "$TMP/golden.diff")"
  fi
else
  fail "golden-empty-screen" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# The Spectrum pane after a weight-space correction (issue 13, item 7): the residual
# W - (Q(W) + C) is a third series, and the verdict line says what the correction removed.
s="qs-resid-$$"
# shellcheck disable=SC2086
if start "$s" "LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen" $MODEL_ARGS; then
  cmd "$s" "quant * int4 gran=channel"
  wait_for "$s" "bits/weight" 15
  wait_idle "$s"
  cmd "$s" "correct $L1 lowrank r=8"
  wait_for "$s" "$L1 lowrank r=8: recovery" 30
  wait_idle "$s"
  esc "$s"
  T send-keys -t "$s" j # the second layer, the corrected one
  if wait_for "$s" "W-(Q+C)" 20 && wait_for "$s" "; C-" 10 && wait_for "$s" "null" 5; then
    pass "spectrum-residual-of-correction"
  else
    fail "spectrum-residual-of-correction" "$(screen "$s")"
  fi
  T kill-session -t "$s" >/dev/null 2>&1
else
  fail "spectrum-residual-of-correction" "$(screen "$s")"
fi

# Strings from a model file reach the screen as text, never as terminal controls: a model whose
# metadata holds ESC / BEL and C1 controls (OSC that would set the pane's title, CSI colour)
# shows them as '?' (layer names with controls are refused at load: robust_load.sh); a layer
# name that needs quoting (a space, a quote) works from the keys. Then `screenshot` writes through qs_outfile: a FIFO with no
# reader is refused at once (the UI does not hang), a regular file is replaced by a new one
# (write-then-rename), a device is written in place and its error reported.
python3 - "$TMP/evil.safetensors" ${MODEL_ARGS:-datasets/models/digits-mlp.safetensors} <<'PY'
import json, struct, sys
b = open(sys.argv[2], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
names = h['__metadata__']['qscope.layers'].split(',')
evil = {names[-1]: names[-1] + "'s RED"}
out = {}
for k, v in h.items():
    if k == '__metadata__':
        v = dict(v, **{'qscope.layers': ','.join(evil.get(x, x) for x in names),
                       'evil': '\x1b]2;PWNED\x07\u009d2;PWNED\u009c'})
    else:
        layer, _, rest = k.rpartition('.')
        k = evil.get(layer, layer) + '.' + rest
    out[k] = v
hb = json.dumps(out).encode()
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(hb)) + hb + b[8 + n:])
PY
DATA=datasets/digits.csv
s="qs-evil-$$"
T new-session -d -s "$s" -x 100 -y 30 -c "$TMP" "exec env XDG_STATE_HOME=$TMP/evil-state LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen $QABS $TMP/evil.safetensors $PWD/$DATA"
if wait_for "$s" " PANES " 15 && wait_for "$s" "bits/w" 30; then
  cmd "$s" "info"
  wait_for "$s" "evil = " 10
  esc "$s"
  T send-keys -t "$s" j # the second layer: its name is in the spectrum's title too
  wait_idle "$s"
  sc=$(screen "$s")
  title=$(T display-message -p -t "$s" '#{pane_title}')
  if grep -qF "${LAYERS[-1]}'s RED" <<<"$sc" &&
     grep -qF "evil = ?]2;PWNED??2;PWNED?" <<<"$sc" && [ "${title#*PWNED}" = "$title" ]; then
    pass "file-strings-drawn-safe"
  else
    fail "file-strings-drawn-safe" "pane title: $title" "$sc"
  fi
  # a key on a layer whose name needs quoting (a space, a quote, a control) runs on that layer
  T send-keys -t "$s" j j j j j j j j j j j j j j j j # to the last layer
  wait_for "$s" ">${LAYERS[-1]}'s RED" 5
  T send-keys -t "$s" -- -
  if wait_for "$s" "> quant \"${LAYERS[-1]}'s RED\" int8 gran=channel" 10 && wait_idle "$s" &&
     screen "$s" | grep -qE "^>${LAYERS[-1]}'s RED +int8/channel" && ! screen "$s" | grep -q "error:"; then
    pass "key-on-quoted-layer-name"
  else
    fail "key-on-quoted-layer-name" "$(screen "$s")"
  fi
  mkfifo "$TMP/fifo"
  cmd "$s" "screenshot fifo"
  if wait_for "$s" "screenshot: fifo: cannot open for writing" 10 && wait_idle "$s" &&
     [ -p "$TMP/fifo" ]; then
    pass "screenshot-fifo-refused"
  else
    fail "screenshot-fifo-refused" "$(screen "$s")"
  fi
  echo old >"$TMP/old.shot"
  ln "$TMP/old.shot" "$TMP/old.link" # a second name of the old file keeps the old contents
  cmd "$s" "screenshot old.shot"
  if wait_for "$s" "screenshot old.shot (100x30)" 10 && [ "$(cat "$TMP/old.link")" = old ] &&
     [ "$(wc -l <"$TMP/old.shot")" = 30 ] && ! compgen -G "$TMP/old.shot.tmp*" >/dev/null; then
    pass "screenshot-replaces-by-rename"
  else
    fail "screenshot-replaces-by-rename" "$(ls -la "$TMP")" "$(screen "$s")"
  fi
  if [ -c /dev/full ] && [ -w /dev/full ]; then
    cmd "$s" "screenshot /dev/full"
    if wait_for "$s" "screenshot: /dev/full: cannot write: No space left on device" 10 &&
       [ -c /dev/full ]; then
      pass "screenshot-device-error-reported"
    else
      fail "screenshot-device-error-reported" "$(ls -la /dev/full)" "$(screen "$s")"
    fi
  fi
else
  fail "file-strings-drawn-safe" "did not start" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# A transformer in the TUI (issue 12): the Task pane shows eval's perplexity and loss (float vs
# quantized) with KL, top-1 agreement and the gate; every key is offered once its command works on
# a transformer (ablate does since lmablate: 'a' runs it on the selected site); the Corrections pane offers
# only the methods `correct` fits there; site names are whole while the layers table has room
# and lose their middle, never their ends, when it has not.
LM_ARGS="datasets/models/tiny-llama datasets/text/licenses.txt"
s="qs-lm-$$"
if [ -d datasets/models/tiny-llama ] && start "$s" "LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen" "$LM_ARGS"; then
  cmd "$s" "quant * int4 gran=channel"
  wait_for "$s" "* -> int4: " 15 && wait_idle "$s"
  wait_for "$s" "ppl" 30
  # eval's own figures, printed as the pane prints them
  # shellcheck disable=SC2086
  ev=$($Q --json -c "quant * int4 gran=channel; eval" $LM_ARGS 2>/dev/null | grep '"cmd":"eval"')
  fppl=$(grep -oE '"float":\{"ppl":[0-9.e+-]+' <<<"$ev" | cut -d: -f3)
  qppl=$(grep -oE '"quant":\{"ppl":[0-9.e+-]+' <<<"$ev" | cut -d: -f3)
  fppl=$(printf '%.3f' "$fppl" 2>/dev/null) qppl=$(printf '%.3f' "$qppl" 2>/dev/null)
  sc=$(screen "$s")
  if grep -qE "[│|] +ppl +loss" <<<"$sc" && grep -qE "[│|] float +$fppl +[0-9]+\.[0-9]+" <<<"$sc" &&
     grep -qE "[│|] quant +$qppl +[0-9]+\.[0-9]+" <<<"$sc" && [ "$fppl" != "$qppl" ] &&
     grep -q "top-1 agree" <<<"$sc" && grep -qE "KL [0-9]" <<<"$sc" && grep -q "gate PASS" <<<"$sc"; then
    pass "lm.task-pane-perplexity"
  else
    fail "lm.task-pane-perplexity" "eval: float ppl $fppl, quant ppl $qppl" "$sc"
  fi

  # the key hints and the help overlay offer ablate; 'a' runs it on the selected site (which
  # has no correction here, so it says so)
  esc "$s"
  hint=$(screen "$s" | tail -1)
  T send-keys -t "$s" a
  ok=0
  if wait_for "$s" "has no correction to ablate" 30 && grep -q "a ablate" <<<"$hint" &&
     grep -q "c correct" <<<"$hint" && ! screen "$s" | grep -q "works on MLPs" &&
     screen "$s" | grep -qF "qera|eora|bias|linear [r=K]"; then
    T send-keys -t "$s" '?'
    if wait_for "$s" "Keys in the panes" 5 && screen "$s" | grep -qE "^. +e +per-layer error table: error " &&
       screen "$s" | grep -qE "^. +a +judge .*: ablate LAYER "; then
      ok=1
    fi
    T send-keys -t "$s" Escape
  fi
  sc=$(screen "$s")
  # shellcheck disable=SC2086
  T new-session -d -s "$s-mlp" -x 100 -y 30 "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen $Q $MODEL_ARGS"
  if [ $ok = 1 ] && wait_for "$s-mlp" "bits/w" 30 && screen "$s-mlp" | tail -1 | grep -q "c correct  a ablate"; then
    pass "lm.keys-follow-model-family"
  else
    fail "lm.keys-follow-model-family" "hint: $hint" "$sc" "$(screen "$s-mlp")"
  fi
  T kill-session -t "$s-mlp" >/dev/null 2>&1

  # names: whole at 100 columns; at 80x24 both ends around an ellipsis
  wait_for "$s" "1 Layers" 5
  full=0
  screen "$s" | grep -qE "^>model\.layers\.0\.self_attn\.q_proj " && full=1
  T resize-window -t "$s" -x 80 -y 24
  if [ $full = 1 ] && wait_for "$s" "model.layers.0…" 10 &&
     screen "$s" | grep -qE "^>model\.layers\.0…[a-z_.]*q_proj int4" &&
     screen "$s" | grep -qE "^ model\.layers\.0…[a-z_.]*k_proj int4" &&
     screen "$s" | grep -qF "3 Spectrum 0…q_proj 64x64" && screen "$s" | grep -qF "4 Rank profile 0…q_proj"; then
    pass "lm.long-names-elide-middle"
  else
    fail "lm.long-names-elide-middle" "whole at 100 columns: $full" "$(screen "$s")"
  fi
else
  fail "lm.start" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1
# the ASCII fallback elides with "..."
s="qs-lm-ascii-$$"
T new-session -d -s "$s" -x 80 -y 24 "env LANG=C LC_ALL=C TERM=screen $Q $LM_ARGS"
if wait_for "$s" "bits/w" 30 && wait_for "$s" "model.layers.0..." 10 &&
   screen "$s" | grep -qE "^>model\.layers\.0\.\.\.[a-z_.]*q_proj "; then
  pass "lm.long-names-elide-ascii"
else
  fail "lm.long-names-elide-ascii" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# The line REPL in a terminal (--repl): Ctrl-C at the prompt clears the line, Ctrl-C during a job
# cancels the job, neither ends qscope; `quit` with unsaved work asks (n stays, y leaves); at the
# end the history is saved and the journal closed.
s="qs-repl-$$"
RS=$TMP/repl-state
last_line() { screen "$1" | grep -v '^ *$' | tail -1 | sed 's/ *$//'; }
# wait_prompt SESSION: the last line is an empty prompt
wait_prompt() {
  for ((i = 0; i < 300; i++)); do
    [ "$(last_line "$1")" = "qscope>" ] && return 0
    sleep 0.05
  done
  return 1
}
alive() { [ "$(T display-message -p -t "$1" '#{pane_dead}')" = 0 ] && [ -n "$(qscope_pid "$1")" ]; }
T new-session -d -s "$s" -x 100 -y 30 "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen XDG_STATE_HOME=$RS $Q --repl $MODEL_ARGS; echo qscope-exit=\$?"
if wait_prompt "$s"; then
  T send-keys -t "$s" -l "info half-typed"
  wait_for "$s" "qscope> info half-typed" 5
  T send-keys -t "$s" C-c
  ok=0
  if wait_for "$s" "qscope> info half-typed^C" 5 && wait_prompt "$s" && alive "$s"; then
    T send-keys -t "$s" -l "info" # the line was cleared: this runs `info`, not `info half-typedinfo`
    T send-keys -t "$s" Enter
    wait_for "$s" "split   rows, seed" 10 && wait_prompt "$s" && ok=1
  fi
  if [ $ok = 1 ]; then pass "repl.ctrl-c-clears-line"
  else fail "repl.ctrl-c-clears-line" "$(screen_all "$s")"; fi

  T send-keys -t "$s" -l "train epochs=100000"
  T send-keys -t "$s" Enter
  ok=0
  if wait_for "$s" "epoch 10/100000" 30; then
    T send-keys -t "$s" C-c
    wait_for "$s" "error: train: cancelled after epoch" 20 && wait_prompt "$s" && alive "$s" && ok=1
  fi
  if [ $ok = 1 ]; then pass "repl.ctrl-c-cancels-job"
  else fail "repl.ctrl-c-cancels-job" "$(screen_all "$s")"; fi

  # Ctrl-C during a sourced script stops the script too, even with bail off
  printf 'set bail off\ntrain epochs=100000\nquant fc0 int2\n' >"$TMP/long.qs"
  T send-keys -t "$s" -l "source $TMP/long.qs"
  T send-keys -t "$s" Enter
  ok=0
  if wait_for "$s" "epoch 10/100000" 30; then
    T send-keys -t "$s" C-c
    if wait_for "$s" "the rest of the script was not run" 20 && wait_prompt "$s"; then
      T send-keys -t "$s" -l "rules; info"
      T send-keys -t "$s" Enter
      wait_for "$s" "split   rows, seed" 10 && wait_prompt "$s" && ! screen_all "$s" | grep -q "int2" && ok=1
    fi
  fi
  if [ $ok = 1 ]; then pass "repl.ctrl-c-stops-script"
  else fail "repl.ctrl-c-stops-script" "$(screen_all "$s")"; fi
  T send-keys -t "$s" -l "set bail on"
  T send-keys -t "$s" Enter
  wait_prompt "$s"

  T send-keys -t "$s" -l "quant * int4"
  T send-keys -t "$s" Enter
  wait_for "$s" "* -> int4: " 15 && wait_prompt "$s"
  T send-keys -t "$s" -l "quit"
  T send-keys -t "$s" Enter
  ok=0
  if wait_for "$s" "since the last \`save session\`: quit anyway? (y/n)" 10; then
    T send-keys -t "$s" -l "n"
    T send-keys -t "$s" Enter
    if wait_for "$s" "quit cancelled" 10 && wait_prompt "$s" && alive "$s"; then
      T send-keys -t "$s" -l "quit"
      T send-keys -t "$s" Enter
      for ((i = 0; i < 200; i++)); do
        [ "$(screen "$s" | grep -c "quit anyway? (y/n)")" = 2 ] && break
        sleep 0.05
      done
      T send-keys -t "$s" -l "y"
      T send-keys -t "$s" Enter
      wait_all "$s" "qscope-exit=0" 10 && ok=1
    fi
  fi
  if [ $ok = 1 ]; then pass "repl.quit-asks-when-unsaved"
  else fail "repl.quit-asks-when-unsaved" "$(screen_all "$s")"; fi
  open_journals=$(find "$RS" -name '*.qs' -exec grep -L '^# closed' {} + 2>/dev/null)
  if [ $ok = 1 ] && grep -qxF "train epochs=100000" "$RS/qscope/history" 2>/dev/null && [ -z "$open_journals" ]; then
    pass "repl.history-saved-journal-closed"
  else
    fail "repl.history-saved-journal-closed" "open journals: $open_journals" "$(cat "$RS/qscope/history" 2>&1)"
  fi
else
  fail "repl.start" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1
# A script piped into --repl is never asked anything (stdin is not a terminal).
# shellcheck disable=SC2086
out=$(printf 'quant * int4\nquit\n' | XDG_STATE_HOME=$TMP/pipe-state timeout 60 $Q --repl $MODEL_ARGS 2>&1); rc=$?
if [ $rc = 0 ] && ! grep -q "quit anyway" <<<"$out"; then pass "repl.piped-quit-does-not-ask"
else fail "repl.piped-quit-does-not-ask" "exit $rc" "$out"; fi

# Outside the TUI the front-end command explains itself.
out=$(echo "screenshot $TMP/x" | $Q --no-default 2>&1)
if grep -q "screenshot needs the TUI" <<<"$out"; then pass "screenshot-outside-tui"
else fail "screenshot-outside-tui" "$out"; fi
exit 0
