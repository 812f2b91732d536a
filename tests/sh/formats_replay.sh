#!/usr/bin/env bash
# formats_replay.sh - whatever `quant` accepts, its journaled (canonical) form accepts and replays
# to the same state: every format of src/quant/format.c's table (plus a generic minifloat and a
# companding width) at every granularity - tensor, channel, group:N with N not dividing some rows
# (the last group of a row is then shorter, with its own scale), and the block formats' fixed
# blocks - on every bundled model, each followed by `eval`; the session is saved and must pass
# `--replay S --check`.
#
# Runtime: one session per model. The transformers evaluate on the first 20000 bytes of their
# bundled text (the state under test, the quantized weights, does not depend on the data; the
# evals only prove the replayed state equal), so the whole script takes well under a minute.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=$PWD/qscope
pass() { echo "PASS formats_replay.$1"; }
fail() { echo "FAIL formats_replay.$1"; }

# The replay safe mode refuses commands that write files unless --allow-writes; `save session`
# is not itself journaled, so the flag is only passed where qscope knows it.
AW=""
$Q --help 2>&1 | grep -q -- '--allow-writes' && AW="--allow-writes"

# Format names from the table (qs_format_names), "none" aside, plus generic spellings.
mapfile -t FORMATS < <(sed -n '/names\[P_COUNT + 1\] = {/,/NULL/p' src/quant/format.c |
    grep -o '"[^"]*"' | tr -d '"' | grep -vx none)
FORMATS+=(e3m4b1 compand:2)
if [ "${#FORMATS[@]}" -lt 20 ]; then
    fail format-table; echo "  could not read the format table (${#FORMATS[@]} names)" >&2
fi

# The granularities each format accepts (MX and NVFP4: fixed blocks only; NF4: no gran=tensor).
grans() {
    case $1 in
    mx* | nvfp4) echo "-" ;;
    nf4) echo "- gran=channel gran=group:5 gran=group:24" ;;
    *) echo "- gran=tensor gran=channel gran=group:5 gran=group:24" ;;
    esac
}

script=""
n=0
for f in "${FORMATS[@]}"; do
    for g in $(grans "$f"); do
        [ "$g" = - ] && g=""
        script+="quant * $f${g:+ $g}; eval; "
        n=$((n + 1))
    done
done

head -c 20000 datasets/text/licenses.txt >"$T/licenses-20k.txt"
models=()
for m in datasets/models/*.safetensors; do
    name=$(basename "$m" .safetensors)
    models+=("$name|$m|datasets/${name%-mlp}.csv")
done
models+=("tiny-gpt2|datasets/models/tiny-gpt2|$T/licenses-20k.txt")
models+=("tiny-llama|datasets/models/tiny-llama|$T/licenses-20k.txt")

for spec in "${models[@]}"; do
    IFS='|' read -r name model data <<<"$spec"
    s="$T/$name.qs"
    out=$($Q --no-default -c "load model $model; load data $data; ${script}save session $s" 2>&1)
    rc=$?
    if [ $rc != 0 ] || [ ! -s "$s" ]; then
        fail "$name.record"; echo "  rc=$rc: $(grep -i 'error\|quant:\|refus' <<<"$out" | head -3)" >&2
        continue
    fi
    # every quant journaled (n of them, in canonical form), every eval recorded
    nq=$(grep -c '^quant \* ' "$s")
    ne=$(grep -c '^eval$' "$s")
    if [ "$nq" = "$n" ] && [ "$ne" = "$n" ]; then
        pass "$name.journal"
    else
        fail "$name.journal"; echo "  $nq quant and $ne eval lines, expected $n each" >&2
    fi
    rep=$($Q --replay "$s" --check $AW 2>&1)
    rc=$?
    if [ $rc = 0 ] && grep -q "replay: $((n * 2 + 2)) commands, .* 0 differ" <<<"$rep"; then
        pass "$name.replay-check"
    else
        fail "$name.replay-check"
        echo "  rc=$rc: $(grep -i 'error\|differ\|quant:\|refus' <<<"$rep" | head -3)" >&2
    fi
done
