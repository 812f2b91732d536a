#!/bin/bash
# zoo.sh - `make zoo`: the study's model matrix (issue 15). Six GPT-2 shapes (d_model, n_layer)
# in {(64,2), (64,4), (128,4), (128,6), (256,4), (256,6)} x training seeds {42, 123, 999}, each
# trained from scratch by `qscope train` (AdamW, cosine after warm-up, clip 1) on the same fixed
# token budget, byte-level (vocabulary 256, context 128, n_head = d_model / 32, d_ff = 4 d_model,
# tied head) on the English text of Debian's `fortunes` package: every fortune file of
# /usr/share/games/fortunes (not the .dat indexes, not the .u8 links) concatenated in C-locale
# name order, 2,576,674 bytes; the last 10 % is held out (qscope's split) and every model must
# pass the language-model gate on it (held-out loss <= 0.75 x the held-out unigram entropy).
#
# Environment: ZOO (the output folder, required), STEPS (optimizer steps of 16 windows x 128
# tokens), QSCOPE (the binary, default ./qscope), JOBS (default: the core count), ONLY ("D L SEED"
# lines: train only these, e.g. ONLY="64 2 42" for one model). Resumable: a
# model whose folder holds DONE is skipped; an unfinished one, or one that failed the gate (kept
# as ZOO/gpt2-dD-lL-sSEED.gatefail), is trained again from scratch.
# Every trained model is ZOO/gpt2-dD-lL-sSEED/{config.json,model.safetensors,train.json,DONE};
# ZOO/zoo.tsv sums them up; ZOO/CORPUS records the package, its version and the text's SHA-256.
set -euo pipefail
: "${ZOO:?give ZOO=DIR}"
STEPS=${STEPS:-600}
QSCOPE=$(readlink -f "${QSCOPE:-./qscope}")
JOBS=${JOBS:-$(nproc)}
HERE=$(cd "$(dirname "$0")" && pwd)
FORT=/usr/share/games/fortunes
SHA_EXPECTED=fbc2d796dde8ea64a51345ce4c18ff486a778a2d2259603987073bedb3fc3cd7 # fortunes 1:1.99.1-7.3
mkdir -p "$ZOO"
ZOO=$(readlink -f "$ZOO")

corpus="$ZOO/fortunes.txt"
if [ ! -s "$corpus" ]; then
    find "$FORT" -maxdepth 1 -type f ! -name '*.dat' -print0 | LC_ALL=C sort -z |
        xargs -0 cat > "$corpus.tmp"
    mv "$corpus.tmp" "$corpus"
fi
sha=$(sha256sum "$corpus" | cut -d' ' -f1)
ver=$(dpkg-query -W -f='${Version}' fortunes 2>/dev/null || echo unknown)
printf 'package fortunes %s\nfiles %s/* (regular files but *.dat, C-locale name order)\nbytes %s\nsha256 %s\n' \
    "$ver" "$FORT" "$(stat -c %s "$corpus")" "$sha" > "$ZOO/CORPUS"
[ "$sha" = "$SHA_EXPECTED" ] ||
    echo "zoo: note: the corpus differs from the one the README's figures were measured on ($ver)" >&2

for shape in "64 2" "64 4" "128 4" "128 6" "256 4" "256 6"; do
    set -- $shape
    [ -s "$ZOO/init/d$1-l$2/config.json" ] ||
        /usr/bin/python3 "$HERE/lm_shape.py" "$ZOO/init/d$1-l$2" "$1" "$2" 128 256
done

# one model: d_model, n_layer, seed
one() {
    local d=$1 l=$2 seed=$3 out="$ZOO/gpt2-d$1-l$2-s$3"
    if [ -f "$out/DONE" ]; then
        echo "gpt2-d$d-l$l-s$seed: done before, skipped"
        return 0
    fi
    rm -rf "$out" "$out.part"
    local t0=$SECONDS
    OPENBLAS_NUM_THREADS=1 "$QSCOPE" --no-default --json -c "load model $ZOO/init/d$d-l$l; \
        load data $corpus; train steps=$STEPS batch=16 ctx=128 lr=0.003 seed=$seed \
        out=$out.part" > "$ZOO/gpt2-d$d-l$l-s$seed.log" 2>&1 || {
        echo "gpt2-d$d-l$l-s$seed: qscope failed (see its .log)" >&2
        return 1
    }
    grep '"cmd":"train"' "$ZOO/gpt2-d$d-l$l-s$seed.log" > "$out.part/train.json"
    local val gate
    val=$(sed -n 's/.*"val_loss":\([^,]*\).*/\1/p' "$out.part/train.json")
    gate=$(sed -n 's/.*"gate":"\([a-z]*\)".*/\1/p' "$out.part/train.json")
    echo "gpt2-d$d-l$l-s$seed: validation loss $val, gate $gate, $((SECONDS - t0)) s"
    if [ "$gate" != pass ]; then # kept aside, and trained again by the next run (more STEPS?)
        rm -rf "$out.gatefail"
        mv "$out.part" "$out.gatefail"
        return 1
    fi
    mv "$out.part" "$out"
    printf 'd_model %s\nn_layer %s\nseed %s\nsteps %s\nval_loss %s\ngate %s\nseconds %s\n' \
        "$d" "$l" "$seed" "$STEPS" "$val" "$gate" "$((SECONDS - t0))" > "$out/DONE"
}
export -f one
export ZOO STEPS QSCOPE corpus

models() {
    if [ -n "${ONLY:-}" ]; then
        printf '%s\n' "$ONLY"
        return
    fi
    # the costliest first, so that the two queues end together
    for shape in "256 6" "256 4" "128 6" "128 4" "64 4" "64 2"; do
        for seed in 42 123 999; do echo "$shape $seed"; done
    done
}
t0=$SECONDS
rc=0
models | SHELL=/bin/bash parallel --will-cite -j "$JOBS" --colsep ' ' --joblog "$ZOO/joblog" one {1} {2} {3} || rc=$?
{
    printf 'model\td_model\tn_layer\tseed\tsteps\tval_loss\tgate\tseconds\n'
    for f in "$ZOO"/gpt2-*/DONE; do
        [ -f "$f" ] || continue
        printf '%s' "$(basename "$(dirname "$f")")"
        awk '{printf "\t%s", $2}' "$f"
        printf '\n'
    done
} > "$ZOO/zoo.tsv"
column -t "$ZOO/zoo.tsv" 2>/dev/null || cat "$ZOO/zoo.tsv"
echo "zoo: $(grep -c pass "$ZOO/zoo.tsv" || true) of 18 models pass the gate; this run took $((SECONDS - t0)) s with $JOBS jobs; models in $ZOO"
exit $rc
