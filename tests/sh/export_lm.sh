#!/usr/bin/env bash
# export_lm.sh - `export model DIR` on transformers: a Hugging Face folder holding the session's
# weights (Q(W) + C dequantized to F32) that qscope loads back into the same quantized model.
#
# Tolerance: the reloaded model's float loss must equal the session's quantized loss as eval
# prints it (9 significant digits), i.e. |a - b| <= 1e-8 |b|. The exported F32 tensors are the
# very floats the session's forward uses (GPT-2's Conv1D transposes are exact), and the forward
# runs the same code on the same shapes, so the two losses are in fact the same double; the
# tolerance only absorbs the printing.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
TXT=datasets/text/licenses.txt
pass() { echo "PASS export_lm.$1"; }
fail() { echo "FAIL export_lm.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# same NAME A B: the eval JSON lines A and B give equal losses; FIELD_A / FIELD_B name which
same() { # name, json a, field a, json b, field b, exact?
  python3 - "$2" "$3" "$4" "$5" "$6" <<'PY'
import json, sys
a, fa, b, fb, exact = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
x = json.loads(a)[fa]["loss"]; y = json.loads(b)[fb]["loss"]
ok = x == y if exact == "exact" else abs(x - y) <= 1e-8 * abs(y)
if not ok:
    print(f"  {fa} {x} vs {fb} {y}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

for fam in gpt2 llama; do
  M=datasets/models/tiny-$fam
  if [ $fam = gpt2 ]; then site=h.0.attn.c_proj; arch=GPT2LMHeadModel
  else site=model.layers.0.self_attn.o_proj; arch=LlamaForCausalLM; fi
  # quantized + corrected: the reloaded folder's float eval is the session's quantized eval
  out=$($Q "$M" $TXT --json -c "quant * int4 gran=channel; correct $site qera r=4; eval; export model $T/$fam-q" 2>&1)
  ev=$(grep '"cmd":"eval"' <<<"$out")
  re=$($Q "$T/$fam-q" $TXT --json -c eval 2>&1 | grep '"cmd":"eval"')
  check $fam.quant-reload "[ -n '$ev' ] && [ -n '$re' ] && same $fam '$ev' quant '$re' float tol"
  check $fam.quant-differs "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"quant\"][\"loss\"]!=o[\"float\"][\"loss\"]' '$ev'"
  check $fam.config "python3 -c '
import json, sys
c = json.load(open(sys.argv[1] + \"/config.json\")); o = json.load(open(sys.argv[2] + \"/config.json\"))
assert c[\"model_type\"] == o[\"model_type\"] == sys.argv[3] and c[\"architectures\"] == o[\"architectures\"] == [sys.argv[4]]
assert c[\"torch_dtype\"] == \"float32\"
' '$T/$fam-q' '$M' $fam $arch"
  check $fam.metadata "python3 -c '
import json, struct, sys, hashlib
f = open(sys.argv[1] + \"/model.safetensors\", \"rb\"); n = struct.unpack(\"<Q\", f.read(8))[0]
h = json.loads(f.read(n)); md = h[\"__metadata__\"]
src = hashlib.sha256(open(sys.argv[2] + \"/model.safetensors\", \"rb\").read()).hexdigest()
assert md[\"qscope.source_sha256\"] == src and md[\"qscope.export\"] == \"fake-quant\" and md[\"qscope.version\"]
assert md[\"format\"] == \"pt\" and set(md[\"qscope.weight_formats\"].split(\",\")) == {\"int4\"}
assert \"qera:r=4\" in md[\"qscope.corrections\"].split(\",\")
assert all(t[\"dtype\"] == \"F32\" for k, t in h.items() if k != \"__metadata__\")
' '$T/$fam-q' '$M'"
  # unquantized: the export is the original model, to the bit
  ev0=$($Q "$M" $TXT --json -c eval 2>&1 | grep '"cmd":"eval"')
  $Q "$M" --json -c "export model $T/$fam-f" >/dev/null 2>&1
  re0=$($Q "$T/$fam-f" $TXT --json -c eval 2>&1 | grep '"cmd":"eval"')
  check $fam.float-reload-exact "[ -n '$re0' ] && same $fam '$ev0' float '$re0' float exact"
  # packed: codes, scales and the fitted factors; reloaded, the same loss to the bit (the
  # dequantization and the folding are the session's code paths), and a smaller file
  out=$($Q "$M" $TXT --json -c "quant * int4 gran=group:32; correct $site qera r=4; eval; export model $T/$fam-p packed" 2>&1)
  ev=$(grep '"cmd":"eval"' <<<"$out")
  re=$($Q "$T/$fam-p" $TXT --json -c eval 2>&1 | grep '"cmd":"eval"')
  check $fam.packed-reload-exact "[ -n '$ev' ] && [ -n '$re' ] && same $fam '$ev' quant '$re' float exact"
  check $fam.packed-smaller "[ \$(stat -c %s $T/$fam-p/model.safetensors) -lt \$(( \$(stat -c %s $T/$fam-q/model.safetensors) / 2 )) ]"
  check $fam.packed-metadata "python3 -c '
import json, struct, sys
f = open(sys.argv[1] + \"/model.safetensors\", \"rb\"); n = struct.unpack(\"<Q\", f.read(8))[0]
h = json.loads(f.read(n)); md = h[\"__metadata__\"]
assert md[\"qscope.export\"] == \"packed\" and \"qera:r=4\" in md[\"qscope.corrections\"].split(\",\")
p = (\"transformer.\" if sys.argv[3] == \"gpt2\" else \"\") + sys.argv[2]
assert h[p + \".weight.codes\"][\"dtype\"] == \"U8\" and h[p + \".corr.l\"][\"shape\"][1] == 4
assert p + \".weight\" not in h and \"lm_head.weight.codes\" in h
' '$T/$fam-p' $site $fam"
done

# LLaMA sites have no bias: a bias correction cannot be written packed (nor folded), said so.
msg=$($Q datasets/models/tiny-llama $TXT -c "quant * int4; correct model.layers.0.mlp.up_proj bias; export model $T/lb packed" 2>&1); rc=$?
check llama.packed-bias-refused "[ $rc = 1 ] && grep -q 'up_proj has no bias to fold its bias correction into' <<<'$msg' && [ ! -e '$T/lb' ]"

# A path that exists and is not a folder is refused, naming it.
: >"$T/file"
msg=$($Q datasets/models/tiny-gpt2 -c "export model $T/file" 2>&1); rc=$?
check not-a-folder "[ $rc = 1 ] && grep -q 'not a folder' <<<'$msg'"
