#!/usr/bin/env bash
# tui_keys.sh - the TUI's key table and transformers in the TUI, driven through tmux:
#   help-lists-key-table  the help overlay lists exactly the rows of the key table in
#                         src/tui/keys.c (keys, help, the command a key runs), on an MLP and on a
#                         transformer; a row without help, or a key missing from the overlay,
#                         fails
#   key-templates-run     every key row's command template, filled for fc1 of the digits MLP
#                         with the values its placeholders must give there, runs headless as a
#                         command (a template that does not parse, or a placeholder without a
#                         test value, fails)
#   keys-run-their-commands  each of those keys pressed in the TUI on fc1 runs exactly that line
#                         (the dispatcher's echo in the log) with no error after it
#   mlp.bits-key-keeps-activation-role  '-' on an activation-only layer with static scales
#                         runs `quant LAYER int7 on=a amode=static`
#   gpt2.task-pane        after quantizing tiny-gpt2 the Task pane shows eval's perplexities, KL
#                         and top-1 agreement (the figures of `eval --json`, as the pane prints
#                         them)
#   llama.key-correct-ablate  on tiny-llama: '-' requantizes the selected site, 'c' corrects it,
#                         'a' ablates it; the zoomed Corrections pane shows the ablation's verdict
#                         and perplexities, the same as the same commands typed at the CLI
#   llama.names-whole-then-elided  site names are whole while the layers table has room, and at
#                         80 columns keep both ends around an ellipsis
# Waits poll the screen for a marker with a timeout, never a fixed sleep. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
TEST=tui_keys
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh

GPT2="datasets/models/tiny-gpt2 datasets/text/licenses.txt"
LLAMA="datasets/models/tiny-llama datasets/text/licenses.txt"
ENV="LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen"

# ---- the key table, read from its source: label, keys, help and command template of every row
# A row of tui_keys[] is three lines: {"LABEL", "CHARS", {FKEYS}, HINT, / "HELP", / CMD, ...}
# (ROWS: label, help, command, chars, separated by \037: fields may be empty);
# a placeholder row of placeholders[] is one line: {"NAME", "SHOWN", fill_fn},
mapfile -t ROWS < <(awk '
  /^const struct tui_key tui_keys\[\] = \{/ { on = 1; next }
  on && /^};/ { on = 0 }
  on && /^    \{"/ { split($0, a, "\""); label = a[2]; chars = a[4]; st = 1; next }
  on && st == 1 { help = $0; sub(/^ +/, "", help); st = 2; next }
  on && st == 2 {
    cmd = ""; if ($0 ~ /^ +"/) { split($0, c, "\""); cmd = c[2] }
    print label "\037" help "\037" cmd "\037" chars; st = 0
  }' src/tui/keys.c)
# the pane table's rows (src/tui/panes.c): the focus keys' range, the label "%P", covers them
NPANES=$(awk '/^static const struct tui_pane_ops pane_ops\[\] = \{/ { on = 1; next }
  on && /^};/ { on = 0 }
  on && /^    (\[PANE_[A-Z]+\] *= *)?\{"/ { n++ }
  END { print n + 0 }' src/tui/panes.c)
PRANGE="1-$NPANES F2-F$((NPANES + 1))"
[ "$NPANES" = 1 ] && PRANGE="1 F2"
declare -A SHOWN=()
while IFS=$'\t' read -r name shown; do SHOWN[$name]=$shown; done < <(awk '
  /placeholders\[\] = \{/ { on = 1; next }
  on && /^};/ { on = 0 }
  on && /^    \{"/ { split($0, a, "\""); print a[2] "\t" a[4] }' src/tui/keys.c)
# expand TEMPLATE ARRAY-NAME: the template with %L and %{NAME} replaced from the array; fails
# (status 1, the placeholder on stdout) on one the array lacks
expand() {
  local tpl=$1 out="" name
  local -n map=$2
  while [[ $tpl == *%* ]]; do
    out+=${tpl%%\%*}
    tpl=${tpl#*%}
    if [[ $tpl == L* ]]; then name=L tpl=${tpl#L}
    elif [[ $tpl == \{*\}* ]]; then name=${tpl#\{} name=${name%%\}*} tpl=${tpl#*\}}
    else echo "%$tpl"; return 1; fi
    [ -n "${map[$name]+x}" ] || { echo "%{$name}"; return 1; }
    out+=${map[$name]}
  done
  echo "$out$tpl"
}
# help_ok SESSION: the overlay's key lines are the table's rows, one each, in order
help_ok() {
  local s=$1 sc lines want="" i label help cmd bad=""
  T send-keys -t "$s" '?'
  wait_for "$s" "Keys in the panes" 5 || { echo "no help overlay"; return 1; }
  sc=$(screen "$s")
  T send-keys -t "$s" Escape
  wait_for "$s" "1 Layers" 5
  # the lines between the heading and the note after the keys, without the box's borders
  lines=$(sed -n '/Keys in the panes/,/Keys that run a command/p' <<<"$sc" | sed '1d;$d' |
          sed -E 's/^[|│] //; s/ *[|│]$//; s/ +$//')
  [ ${#ROWS[@]} -ge 10 ] || { echo "only ${#ROWS[@]} rows read from keys.c"; return 1; }
  [ ${#SHOWN[@]} -ge 2 ] || { echo "only ${#SHOWN[@]} placeholders read from keys.c"; return 1; }
  [ "$NPANES" -ge 7 ] || { echo "only $NPANES panes read from panes.c"; return 1; }
  for i in "${!ROWS[@]}"; do
    IFS=$'\037' read -r label help cmd _ <<<"${ROWS[$i]}"
    cmd=$(expand "$cmd" SHOWN) || { bad="$bad [row '$label': placeholder $cmd not in the table]"; continue; }
    if [ "${help:0:1}" != '"' ]; then
      bad="$bad [row '$label' has no help: $help]"
      continue
    fi
    help=${help#\"}
    help=${help%%\",*}
    [ "$label" = %P ] && label=$PRANGE
    want+=$(printf '  %-13s %s%s' "$label" "$help" "${cmd:+: $cmd}")$'\n'
  done
  [ -z "$bad" ] || { echo "$bad"; return 1; }
  if [ "$lines" != "${want%$'\n'}" ]; then
    diff <(echo "${want%$'\n'}") <(echo "$lines")
    return 1
  fi
}

# ---- the help overlay is the key table: on an MLP (here) and on a transformer (below) ----
help_why=""
s="qs-mlp-$$"
if start "$s" "$ENV"; then
  out=$(help_ok "$s") || help_why="MLP: $out"
  # '-' on a layer with only its activations quantized (static scales) keeps that role and
  # mode: the key builds the command from the layer's format, not from its description
  # ("int8/static" is no gran= value)
  cmd "$s" "quant fc1 int8 on=a amode=static"
  wait_for "$s" "fc1 -> int8: " 15 && wait_idle "$s"
  esc "$s"
  T send-keys -t "$s" j
  wait_for "$s" ">fc1 " 5
  T send-keys -t "$s" -- -
  if wait_for "$s" "> quant fc1 int7 on=a amode=static" 10 && wait_for "$s" "fc1 -> int7: " 10 &&
     wait_for "$s" "int7/static" 10 && wait_idle "$s" &&
     screen "$s" | grep -qE "^>fc1 .*float +int7/static" && ! screen "$s" | grep -q "^error:"; then
    pass "mlp.bits-key-keeps-activation-role"
  else
    fail "mlp.bits-key-keeps-activation-role" "$(screen "$s")"
  fi
else
  help_why="MLP did not start: $(screen "$s")"
  fail "mlp.bits-key-keeps-activation-role" "did not start"
fi
T kill-session -t "$s" >/dev/null 2>&1

# ---- every key that runs a command, from the table: its template filled for a known layer ----
# The state: fc1 (64x64) of the bundled digits MLP at int4 per channel with a rank-2 LoRC. What
# each placeholder must give there, written out here from its meaning (a row with a placeholder
# missing from this list fails: give it a value):
MLP="datasets/models/digits-mlp.safetensors datasets/digits.csv"
SETUP="quant fc1 int4 gran=channel; correct fc1 lowrank r=2"
declare -A FC1=([L]=fc1 [bits+1]="int5 gran=channel" [bits-1]="int3 gran=channel"
                [format+1]="int3 gran=channel" [format-1]="int8 gran=channel" [rank]=4)
KCMDS=() KCHARS=() KLABELS=() tpl_bad=""
for i in "${!ROWS[@]}"; do
  IFS=$'\037' read -r label _ cmd chars <<<"${ROWS[$i]}"
  [ -n "$cmd" ] || continue
  if ! line=$(expand "$cmd" FC1); then tpl_bad="$tpl_bad [$label: no test value for $line]"; continue; fi
  KCMDS+=("$line") KCHARS+=("${chars:0:1}") KLABELS+=("$label")
done
# each filled template runs as a command, headless (no terminal): it parses and its handler
# accepts it in that state
if [ ${#KCMDS[@]} -lt 8 ]; then
  tpl_bad="$tpl_bad [only ${#KCMDS[@]} command keys read from keys.c]"
fi
for k in "${!KCMDS[@]}"; do
  # shellcheck disable=SC2086
  if ! err=$($Q -c "$SETUP; ${KCMDS[$k]}" $MLP 2>&1 >/dev/null); then
    tpl_bad="$tpl_bad [${KLABELS[$k]}: '${KCMDS[$k]}' fails: $err]"
  fi
done
if [ -z "$tpl_bad" ]; then pass "key-templates-run (${#KCMDS[@]} command keys)"
else fail "key-templates-run" "$tpl_bad"; fi

# and in the TUI, each key pressed on fc1 runs exactly that line (shown in the zoomed log as the
# dispatcher's echo), and no error follows it
s="qs-rt-$$"
# shellcheck disable=SC2086
if start "$s" "$ENV" $MLP; then
  T send-keys -t "$s" 1 j
  wait_for "$s" ">fc1 " 5
  T send-keys -t "$s" 7 z
  wait_for "$s" " ZOOM " 5
  rt_bad=""
  for k in "${!KCMDS[@]}"; do
    cmd "$s" "$SETUP"
    wait_for "$s" "> ${SETUP##*; }" 10 && wait_idle "$s"
    esc "$s" # which also leaves the zoom: the log zoomed again
    T send-keys -t "$s" z
    wait_for "$s" " ZOOM " 5
    T send-keys -t "$s" -l -- "${KCHARS[$k]}"
    if ! wait_for "$s" "> ${KCMDS[$k]}" 10 || ! wait_idle "$s" 120; then
      rt_bad="$rt_bad [${KLABELS[$k]}: no '> ${KCMDS[$k]}']"
      continue
    fi
    after=$(screen "$s" | awk -v l="> ${KCMDS[$k]}" 'index($0, l) == 1 { n = NR; out = "" } n && NR > n { out = out $0 "\n" } END { printf "%s", out }')
    if grep -q "^error" <<<"$after"; then rt_bad="$rt_bad [${KLABELS[$k]}: $(grep "^error" <<<"$after")]"; fi
  done
  if [ -z "$rt_bad" ] && [ ${#KCMDS[@]} -ge 8 ]; then pass "keys-run-their-commands (${#KCMDS[@]} keys)"
  else fail "keys-run-their-commands" "$rt_bad" "$(screen "$s")"; fi
else
  fail "keys-run-their-commands" "did not start: $(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# ---- tiny-gpt2: the Task pane after quantizing shows eval's ppl, KL and top-1 agreement ----
s="qs-gpt2-$$"
# shellcheck disable=SC2086
if start "$s" "$ENV" $GPT2; then
  cmd "$s" "quant * int4 gran=channel"
  wait_for "$s" "* -> int4: " 15 && wait_idle "$s"
  # shellcheck disable=SC2086
  ev=$($Q --json -c "quant * int4 gran=channel; eval" $GPT2 2>/dev/null | grep '"cmd":"eval"')
  num() { grep -oE "\"$1\":[0-9.e+-]+" <<<"$ev" | head -1 | cut -d: -f2; }
  fppl=$(grep -oE '"float":\{"ppl":[0-9.e+-]+' <<<"$ev" | cut -d: -f3)
  qppl=$(grep -oE '"quant":\{"ppl":[0-9.e+-]+' <<<"$ev" | cut -d: -f3)
  fppl=$(printf '%.3f' "$fppl") qppl=$(printf '%.3f' "$qppl")
  kl=$(printf '%.3g' "$(num kl)") top1=$(printf '%.4f' "$(num top1_agree)")
  sc=$(screen "$s")
  if [ -n "$ev" ] && [ "$fppl" != "$qppl" ] && grep -qE "[│|] +ppl +loss" <<<"$sc" &&
     grep -qE "[│|] float +$fppl " <<<"$sc" && grep -qE "[│|] quant +$qppl " <<<"$sc" &&
     grep -qE "KL $kl *([│|]|$)" <<<"$sc" && grep -qE "top-1 agree $top1 *([│|]|$)" <<<"$sc"; then
    pass "gpt2.task-pane"
  else
    fail "gpt2.task-pane" "eval: float ppl $fppl, quant ppl $qppl, KL $kl, top-1 $top1" "$sc"
  fi
else
  fail "gpt2.task-pane" "did not start: $(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1

# ---- tiny-llama: keys requantize, correct and ablate the selected site ----
L=model.layers.0.self_attn.k_proj # the second site
s="qs-llama-$$"
# shellcheck disable=SC2086
if start "$s" "$ENV" $LLAMA; then
  out=$(help_ok "$s") || help_why="$help_why llama: $out"
  if [ -z "$help_why" ]; then pass "help-lists-key-table (${#ROWS[@]} keys)"
  else fail "help-lists-key-table" "$help_why"; fi
  cmd "$s" "quant * int4 gran=channel"
  wait_for "$s" "* -> int4: " 15 && wait_idle "$s"
  esc "$s"
  T send-keys -t "$s" j
  wait_for "$s" ">$L " 5
  ok=1
  T send-keys -t "$s" -- -
  wait_for "$s" "> quant $L int3 gran=channel" 10 && wait_idle "$s" || ok=0
  T send-keys -t "$s" c
  wait_for "$s" "> correct $L lowrank r=4" 30 && wait_idle "$s" 300 || ok=0
  T send-keys -t "$s" a
  wait_for "$s" "> ablate $L" 30 && wait_idle "$s" 300 || ok=0 # minutes on a loaded machine
  T send-keys -t "$s" 5 z # the Corrections pane, zoomed: its lines are not cut
  wait_for "$s" " ZOOM " 5 || ok=0
  # shellcheck disable=SC2086
  ab=$($Q --json -c "quant * int4 gran=channel; quant $L int3 gran=channel; correct $L lowrank r=4; ablate $L" $LLAMA 2>/dev/null | grep '"cmd":"ablate"')
  ppl() { printf '%.3f' "$(grep -oE "\"$1\":\{\"ppl\":[0-9.e+-]+" <<<"$ab" | cut -d: -f3)"; }
  verdict=$(grep -oE '"verdict":"[a-z-]+"' <<<"$ab" | cut -d'"' -f4)
  want="$verdict: ppl q $(ppl quant)>$(ppl quant_corrected) f $(ppl float)>$(ppl float_corrected)"
  sc=$(screen "$s")
  if [ $ok = 1 ] && [ -n "$verdict" ] && grep -qE "^>$L lowrank r=4 R=-?[0-9.]+ \+[0-9]+p" <<<"$sc" &&
     grep -qF "  $want" <<<"$sc" && grep -qF "q/f: quant/float ppl" <<<"$sc"; then
    pass "llama.key-correct-ablate"
  else
    fail "llama.key-correct-ablate" "keys ran: $ok; want: $want" "$sc"
  fi
  T send-keys -t "$s" z
  wait_for "$s" " PANES " 5

  # names: whole at 100 columns (every visible row is a whole site name), both ends at 80
  mapfile -t NAMES < <($Q --json -c layers $LLAMA 2>/dev/null | grep -o '"name":"[^"]*"' | cut -d'"' -f4)
  T send-keys -t "$s" 1
  wait_for "$s" "1 Layers" 5
  sc=$(screen "$s")
  shown=$(grep -E '^[ >]model\.' <<<"$sc" | cut -c2- | awk '{print $1}')
  whole=1
  while read -r n; do
    printf '%s\n' "${NAMES[@]}" | grep -qxF -- "$n" || whole=0
  done <<<"$shown"
  T resize-window -t "$s" -x 80 -y 24
  ok=0
  if [ $whole = 1 ] && [ "$(wc -l <<<"$shown")" -ge 5 ] && wait_for "$s" "model.layers.0…" 10; then
    ok=1 cut=0
    sc=$(screen "$s")
    while read -r n; do # a name that fits is whole; a cut one keeps both ends of a real name
      head=${n%%…*} tail=${n##*…}
      if [ "$head" = "$n" ]; then
        printf '%s\n' "${NAMES[@]}" | grep -qxF -- "$n" || ok=0
        continue
      fi
      cut=$((cut + 1))
      [ ${#head} -ge 8 ] && [ ${#tail} -ge 6 ] || ok=0
      printf '%s\n' "${NAMES[@]}" | grep -q "^$head.*$tail\$" || ok=0
    done < <(grep -E '^[ >]model\.' <<<"$sc" | cut -c2- | awk '{print $1}')
    [ $cut -ge 3 ] || ok=0
  fi
  if [ $ok = 1 ]; then
    pass "llama.names-whole-then-elided"
  else
    fail "llama.names-whole-then-elided" "whole at 100 columns: $whole" "$shown" "$(screen "$s")"
  fi
else
  fail "help-lists-key-table" "$help_why llama did not start"
  fail "llama.start" "$(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1
exit 0
