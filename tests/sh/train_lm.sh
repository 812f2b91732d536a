#!/usr/bin/env bash
# train_lm.sh - `train` on a transformer: the bundled tiny GPT-2's shape trained from scratch on
# the bundled license text lowers the held-out loss clearly in 200 steps, writes a Hugging Face
# folder with its provenance (data hash, steps, validation loss) that becomes the current model,
# and refuses what it cannot do with one clear message.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS train_lm.$1"; }
fail() { echo "FAIL train_lm.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
LM="load model datasets/models/tiny-gpt2; load data datasets/text/licenses.txt"

out=$($Q --json --no-default -c "$LM; train steps=200 batch=8 seed=5 out=$T/m; eval" 2>"$T/err")
rc=$?
check runs "[ $rc = 0 ]"
[ $rc = 0 ] || sed 's/^/  /' "$T/err" >&2
tr=$(grep '"cmd":"train"' <<<"$out")
ev=$(grep '"cmd":"eval"' <<<"$out")
# from ln 256 = 5.545 (uniform) to below the held-out bytes' unigram entropy (3.25)
check lowers-val-loss "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert abs(o[\"val_loss_before\"]-5.545)<0.05 and o[\"val_loss\"]<o[\"task\"][\"unigram_entropy\"]<o[\"val_loss_before\"]-2, o' '$tr'"
# the trained model is the current one: eval's float loss is train's validation loss
check current-model "python3 -c 'import json,sys; t=json.loads(sys.argv[1]); e=json.loads(sys.argv[2]); assert e[\"float\"][\"loss\"]==t[\"val_loss\"]' '$tr' '$ev'"
sha=$(sha256sum datasets/text/licenses.txt | cut -d' ' -f1)
check provenance "python3 - '$T/m' '$sha' '$tr' <<'PY'
import json, struct, sys
d, sha, tr = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
b = open(d + '/model.safetensors', 'rb').read()
meta = json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])['__metadata__']
cfg = json.load(open(d + '/config.json'))
assert cfg['model_type'] == 'gpt2' and cfg['n_embd'] == 64 and cfg['tie_word_embeddings'], cfg
assert meta['qscope.data_sha256'] == sha == tr['data_sha256'], meta
assert meta['qscope.steps'] == '200' and meta['qscope.train_tokens'] == str(200 * 8 * 64), meta
assert abs(float(meta['qscope.val_loss']) - tr['val_loss']) < 1e-6, meta
assert 'steps=200 batch=8' in meta['qscope.train'] and 'seed=5' in meta['qscope.train'], meta
assert meta['qscope.split'] == 'train tokens [0, 130116), validation tokens [130116, 144573)'
PY"
# the folder loads again as a model (with the provenance shown by info)
msg=$($Q --no-default -c "load model $T/m; load data datasets/text/licenses.txt; info" 2>&1)
check reloads "grep -q 'gpt2, 2 blocks' <<<\"\$msg\""

# fine-tuning from the loaded weights (init=model) keeps the loss near the bundled model's
out=$($Q --json --no-default -c "$LM; train steps=3 batch=2 lr=1e-5 init=model out=$T/ft" 2>&1)
check init-model "python3 -c 'import json,sys; o=json.loads(sys.argv[1].splitlines()[-1]); assert o[\"val_loss_before\"]<1.8 and abs(o[\"val_loss\"]-o[\"val_loss_before\"])<0.05, o' '$out'"

# refusals: one line each, nothing written
msg=$($Q --no-default -c "$LM; train steps=10" 2>&1); rc=$?
check needs-out "[ $rc = 1 ] && grep -q 'give out=DIR' <<<\"\$msg\""
msg=$($Q --no-default -c "$LM; train steps=10 hidden=8 out=$T/x" 2>&1); rc=$?
check unknown-option "[ $rc = 1 ] && grep -q \"unknown option 'hidden=8' for a transformer\" <<<\"\$msg\" && [ ! -e $T/x/model.safetensors ]"
msg=$($Q --no-default -c "$LM; train ctx=65 out=$T/x" 2>&1); rc=$?
check ctx-range "[ $rc = 1 ] && grep -q 'train ctx' <<<\"\$msg\""
msg=$($Q --no-default -c "load model datasets/models/tiny-gpt2; train out=$T/x" 2>&1); rc=$?
check needs-data "[ $rc = 1 ] && grep -q 'no token data' <<<\"\$msg\""
