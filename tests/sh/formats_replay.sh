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
Q=${QSCOPE_BIN:-$PWD/qscope}
pass() { echo "PASS formats_replay.$1"; }
fail() { echo "FAIL formats_replay.$1"; }

# The replay safe mode refuses commands that write files unless --allow-writes; `save session`
# is not itself journaled, so the flag is only passed where qscope knows it.
AW=""
$Q --help 2>&1 | grep -q -- '--allow-writes' && AW="--allow-writes"

# Format names from the table (qs_format_names, as the binary lists them when a name is
# unknown), "none" and the generic spellings of that list aside, plus generic spellings.
mapfile -t FORMATS < <($Q --no-default -c 'codes no-such-format' 2>&1 >/dev/null |
    sed -n 's/.*valid: //p' | tr ',' '\n' | tr -d ' ' | grep -vx 'none\|eXmY\[bZ\]\|e0mY\|compand:B')
FORMATS+=(e3m4b1 compand:2)
if [ "${#FORMATS[@]}" -lt 20 ]; then
    fail format-table; echo "  could not read the format table (${#FORMATS[@]} names)" >&2
fi

# The granularities each format accepts (MX, NVFP4 and llama.cpp's ggml types: fixed blocks
# only; fp16 and bf16: no scale at all; NF4: no gran=tensor).
grans() {
    case $1 in
    mx* | nvfp4 | q[2-8]_[01k] | fp16 | bf16) echo "-" ;;
    nf4) echo "- gran=channel gran=group:5 gran=group:24" ;;
    *) echo "- gran=tensor gran=channel gran=group:5 gran=group:24" ;;
    esac
}

# The session of one model: every format at every granularity. llama.cpp's 32-element types
# (q4_0 ... q8_0) refuse, as llama.cpp does, a model with a row that is not a multiple of 32:
# such a pair is left out of the session once its refusal is seen to be clean (one message
# naming the rule).
make_script() { # model
    script=""
    n=0
    for f in "${FORMATS[@]}"; do
        case $f in
        q[458]_[01])
            msg=$($Q --no-default -c "load model $1; quant * $f" 2>&1 >/dev/null)
            if [ $? != 0 ]; then
                if grep -q "no fallback for $f" <<<"$msg" && [ "$(wc -l <<<"$msg")" = 1 ]; then
                    pass "$(basename "$1" .safetensors).$f-refused"
                else
                    fail "$(basename "$1" .safetensors).$f-refused"; echo "  $msg" >&2
                fi
                continue
            fi
            ;;
        esac
        for g in $(grans "$f"); do
            [ "$g" = - ] && g=""
            script+="quant * $f${g:+ $g}; eval; "
            n=$((n + 1))
        done
    done
}

head -c 20000 datasets/text/licenses.txt >"$T/licenses-20k.txt"
models=()
for m in datasets/models/*.safetensors; do
    name=$(basename "$m" .safetensors)
    models+=("$name|$m|datasets/${name%-mlp}.csv")
done
models+=("tiny-gpt2|datasets/models/tiny-gpt2|$T/licenses-20k.txt")
models+=("tiny-llama|datasets/models/tiny-llama|$T/licenses-20k.txt")

for spec in "${models[@]}"; do
    [ -n "${SKIP_REPLAY:-}" ] && break
    IFS='|' read -r name model data <<<"$spec"
    make_script "$model"
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

# ---- export model … packed loads back (dequantized on load) and predicts as the session did ----
D=datasets/models/digits-mlp.safetensors
C=datasets/digits.csv
# eval's quant {acc, loss} in the session, and float {acc, loss} of the file loaded back
evq() { python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][-1]["quant"])'; }
evf() { python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][-1]["float"])'; }
export_check() { # name, quant+correct commands[, fake: also the fake-quant export]
    local name=$1 cmds=$2 fake=${3:-}
    local q p f
    q=$($Q --json --no-default -c "load model $D; load data $C; $cmds; eval; export model $T/p.safetensors packed${fake:+; export model $T/f.safetensors}" 2>"$T/err" | evq)
    p=$($Q --json --no-default -c "load model $T/p.safetensors; load data $C; eval" 2>>"$T/err" | evf)
    f=$p
    [ -n "$fake" ] && f=$($Q --json --no-default -c "load model $T/f.safetensors; load data $C; eval" 2>>"$T/err" | evf)
    if [ -n "$q" ] && [ "$q" = "$p" ] && [ "$q" = "$f" ]; then
        pass "export.$name"
    else
        fail "export.$name"; echo "  session $q, packed $p, fake-quant $f; $(head -2 "$T/err")" >&2
    fi
}
export_check int4-groups-lowrank-bias "quant * int4 gran=group:24; quant fc2 int4 gran=group:32 asym; correct fc1 lowrank r=4; correct fc0 bias" fake
cp "$T/p.safetensors" "$T/keep.safetensors"
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
check export.packed-metadata "python3 - '$T/keep.safetensors' <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); m = h['__metadata__']
assert m['qscope.export'] == 'packed', m
assert m['qscope.weight_formats'] == 'int4,int4,int4', m
assert m['qscope.weight_grans'] == 'group:24,group:24,group:32', m
assert m['qscope.weight_scale_dtypes'] == 'f16,f16,f16', m
assert m['qscope.weight_shapes'] == '64x64,64x64,10x64', m
assert m['qscope.corrections'] == 'bias,lowrank:r=4,-', m
assert 'asym' in m['qscope.weight_options'].split(';')[2], m
assert h['fc1.corr.l']['shape'] == [64, 4] and h['fc1.corr.rt']['shape'] == [4, 64], h
assert h['fc1.corr.l']['dtype'] == 'F32' and h['fc0.corr.bias']['shape'] == [64], h
assert h['fc0.weight.codes']['shape'] == [64 * 64 // 2], h          # two int4 codes a byte
assert h['fc0.weight.scales']['shape'] == [64 * 3 * 2], h           # groups 24 + 24 + 16, F16
assert h['fc2.weight.zeros']['shape'] == [10 * 2], h
assert 'fc0.weight' not in h, h
PY"
# every format of the table at its default granularity, and the other scale and range options;
# the low-rank corrections of every method
for fmt in "${FORMATS[@]}"; do
    export_check "format-$fmt" "quant * $fmt; correct fc0 lowrank r=2"
done
export_check options "quant * int4 gran=channel range=full; quant fc1 fp8-e5m2 scale=f32 sat=0; quant fc2 fp8-e4m3 scale=none"
export_check lqer-qera-eora "quant * int3 gran=group:20; correct fc0 lqer r=3; correct fc1 qera r=2; correct fc2 eora r=2"
export_check float-layer "quant * int4; quant fc1 none; correct fc2 bias"
# a linear map is folded into the weight and bias: the same predictions, the loss to rounding
q=$($Q --json --no-default -c "load model $D; load data $C; quant * int3; correct fc2 linear; eval; export model $T/l.safetensors packed" 2>/dev/null | evq)
p=$($Q --json "$T/l.safetensors" $C -c eval 2>/dev/null | evf)
check export.linear-folded "python3 -c 'import ast,sys; a=ast.literal_eval(sys.argv[1]); b=ast.literal_eval(sys.argv[2]); assert a[\"acc\"]==b[\"acc\"] and abs(a[\"loss\"]-b[\"loss\"])<=1e-5*a[\"loss\"], (a,b)' \"$q\" \"$p\""
# transformers' packed folders (the same reader, per site): tests/sh/export_lm.sh and
# tests/unit/test_lm_packed.c
# a damaged packed file: one message naming the file once and the tensor at fault
python3 - "$T/keep.safetensors" "$T/bad.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
h['fc1.weight.codez'] = h.pop('fc1.weight.codes')
hb = json.dumps(h).encode(); hb += b' ' * (-len(hb) % 8)
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(hb)) + hb + b[8 + n:])
h['fc1.weight.codes'] = h.pop('fc1.weight.codez')
h['__metadata__']['qscope.weight_grans'] = 'group:24,group:32,group:32'
hb = json.dumps(h).encode(); hb += b' ' * (-len(hb) % 8)
open(sys.argv[2] + '2', 'wb').write(struct.pack('<Q', len(hb)) + hb + b[8 + n:])
PY
msg=$($Q --no-default -c "load model $T/bad.safetensors" 2>&1); rc=$?
check export.damaged-names-file-once "[ $rc = 1 ] && [ \$(grep -o 'bad.safetensors' <<<\"\$msg\" | wc -l) = 1 ] && grep -q \"fc1\" <<<\"\$msg\""
msg=$($Q --no-default -c "load model $T/bad.safetensors2" 2>&1); rc=$?
check export.metadata-disagrees "[ $rc = 1 ] && grep -q 'gran=group:32' <<<\"\$msg\""
