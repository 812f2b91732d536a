#!/usr/bin/python3
"""make_delta_fixture.py - a tiny GPT-2 trained by plain PyTorch (outside qscope: its own model
code, not datasets/tools/train_tiny_lm.py) and PyTorch's per-site loss deltas, the reference for
`sensitivity method=delta` on transformers (tests/sh/delta_lm.sh).

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_delta_fixture.py

Writes tests/fixtures/delta_gpt2/:
  config.json, model.safetensors  the model in Hugging Face GPT-2 layout (Conv1D weights stored
                                  (in, out), tied head: no lm_head.weight), F32
  data.txt                        the token data qscope is given: the last 40000 bytes of
                                  datasets/text/licenses.txt (byte tokens, vocabulary 256)
  deltas.json                     per site and format: L(only that site quantized) - L(float)

The held-out loss is computed exactly as qscope defines it (src/analysis/lmbench.c
qs_bench_lm_split, src/model/lm.c qs_lm_evaluate): the held-out tokens are the last n // 10 of
the n tokens, cut into non-overlapping windows w = 0 .. (n_test - 1) // ctx - 1 of ctx inputs
tok[w ctx .. w ctx + ctx) with targets shifted by one; the loss is the mean next-token
cross-entropy over all those positions. The model never sees those bytes in training (it is
trained on licenses.txt without them).

"Only site s quantized": the site's weight W (out, in) replaced by its int8 or int4 fake
quantization, symmetric restricted range, one scale per output channel = float16(max|row| / q),
q = 2^(b-1) - 1, codes rounded half to even (torch.fake_quantize_per_channel_affine, which
matches qscope bit for bit: tests/unit/test_format_torch.c); every other weight float, biases
float, activations float. The head (lm_head) is the tied embedding matrix: quantizing it changes
the output projection only, the embedding lookup stays float (qscope's weight hook does the
same). The reference forward runs in float64 on the float32 weights (and the float32 quantized
weights), so the deltas are exact up to float64 rounding; qscope runs in float32.
"""
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "delta_gpt2")
SEED = 20261201
CFG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 256,
       "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32, "n_ctx": 32, "n_inner": 64,
       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
       "tie_word_embeddings": True}
DATA_BYTES = 40000
STEPS, BATCH, LR = 500, 32, 3e-3


def init_params(gen):
    d, L, V, C, ff = (CFG["n_embd"], CFG["n_layer"], CFG["vocab_size"], CFG["n_positions"],
                      CFG["n_inner"])
    r = lambda *s: torch.randn(*s, generator=gen) * 0.02  # noqa: E731
    p = {"wte": r(V, d), "wpe": r(C, d), "ln_f.w": torch.ones(d), "ln_f.b": torch.zeros(d)}
    for i in range(L):
        h = f"h.{i}."
        p[h + "ln_1.w"], p[h + "ln_1.b"] = torch.ones(d), torch.zeros(d)
        p[h + "ln_2.w"], p[h + "ln_2.b"] = torch.ones(d), torch.zeros(d)
        # linear weights kept (out, in) as nn.Linear does; written transposed (Conv1D) below
        for name, o, n_in in (("attn.c_attn", 3 * d, d), ("attn.c_proj", d, d),
                              ("mlp.c_fc", ff, d), ("mlp.c_proj", d, ff)):
            p[h + name + ".w"] = r(o, n_in)
            p[h + name + ".b"] = torch.zeros(o)
    return {k: v.clone().requires_grad_(True) for k, v in p.items()}


def sites():
    out = []
    for i in range(CFG["n_layer"]):
        out += [f"h.{i}.attn.c_attn", f"h.{i}.attn.c_proj", f"h.{i}.mlp.c_fc", f"h.{i}.mlp.c_proj"]
    return out + ["lm_head"]


def forward(p, idx, over=None):
    """idx: (B, T) -> logits (B, T, V). over: {site: replacement (out, in) weight}."""
    over = over or {}
    d, H = CFG["n_embd"], CFG["n_head"]
    eps = CFG["layer_norm_epsilon"]
    B, T = idx.shape
    lin = lambda x, s: F.linear(x, over.get(s, p[s + ".w"]), p[s + ".b"])  # noqa: E731
    x = p["wte"][idx] + p["wpe"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(CFG["n_layer"]):
        h = f"h.{i}."
        a = F.layer_norm(x, (d,), p[h + "ln_1.w"], p[h + "ln_1.b"], eps)
        q, k, v = lin(a, h + "attn.c_attn").split(d, -1)
        sh = lambda t: t.view(B, T, H, d // H).transpose(1, 2)  # noqa: E731
        s = sh(q) @ sh(k).transpose(-1, -2) / math.sqrt(d // H)
        s = s.masked_fill(~mask, float("-inf"))
        a = (torch.softmax(s, -1) @ sh(v)).transpose(1, 2).reshape(B, T, d)
        x = x + lin(a, h + "attn.c_proj")
        m = F.layer_norm(x, (d,), p[h + "ln_2.w"], p[h + "ln_2.b"], eps)
        m = F.gelu(lin(m, h + "mlp.c_fc"), approximate="tanh")
        x = x + lin(m, h + "mlp.c_proj")
    x = F.layer_norm(x, (d,), p["ln_f.w"], p["ln_f.b"], eps)
    return F.linear(x, over.get("lm_head", p["wte"]))


def fake_quant(w, bits):
    """w: (out, in) float32 -> its per-channel symmetric fake quantization, float32."""
    q = 2 ** (bits - 1) - 1
    amax = w.abs().amax(1)
    scale = (amax / np.float32(q)).half().float()  # float32 division, then float16 (RNE)
    assert bool((scale > 0).all()), "a zero row"
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q)


def windows(tok):
    """qscope's held-out windows of a token stream: inputs (nw, ctx), targets (nw, ctx)."""
    n, ctx = len(tok), CFG["n_positions"]
    test = tok[n - n // 10:]
    nw = (len(test) - 1) // ctx
    x = torch.tensor([test[w * ctx:w * ctx + ctx] for w in range(nw)], dtype=torch.long)
    y = torch.tensor([test[w * ctx + 1:w * ctx + ctx + 1] for w in range(nw)], dtype=torch.long)
    return x, y


def held_out_loss(p64, x, y, over=None):
    with torch.no_grad():
        logits = forward(p64, x, over)
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))


def write_st(path, named):
    header, off, blobs = {}, 0, []
    header["__metadata__"] = {"fixture": "delta_gpt2", "trainer": "tests/tools/make_delta_fixture.py"}
    for name, t in named:
        b = t.detach().contiguous().float().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    with open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "rb") as f:
        text = f.read()
    data = text[-DATA_BYTES:]
    held = DATA_BYTES // 10  # qscope holds out the last n // 10 tokens of data.txt
    train = torch.tensor(list(text[:-held]), dtype=torch.long)
    ctx = CFG["n_positions"]

    p = init_params(gen)
    opt = torch.optim.Adam(p.values(), lr=LR)
    for step in range(STEPS):
        i = torch.randint(0, len(train) - ctx - 1, (BATCH,), generator=gen)
        xb = torch.stack([train[j:j + ctx] for j in i])
        yb = torch.stack([train[j + 1:j + ctx + 1] for j in i])
        logits = forward(p, xb)
        loss = F.cross_entropy(logits.reshape(-1, 256), yb.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step}: train loss {loss.item():.4f}", file=sys.stderr)

    p32 = {k: v.detach().float() for k, v in p.items()}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CFG, f, indent=2)
        f.write("\n")
    named = [("wte.weight", p32["wte"]), ("wpe.weight", p32["wpe"])]
    for i in range(CFG["n_layer"]):
        h = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            named += [(h + ln + ".weight", p32[h + ln + ".w"]), (h + ln + ".bias", p32[h + ln + ".b"])]
        for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            named += [(h + s + ".weight", p32[h + s + ".w"].t()),  # Conv1D: (in, out)
                      (h + s + ".bias", p32[h + s + ".b"])]
    named += [("ln_f.weight", p32["ln_f.w"]), ("ln_f.bias", p32["ln_f.b"])]
    write_st(os.path.join(OUT, "model.safetensors"), named)
    with open(os.path.join(OUT, "data.txt"), "wb") as f:
        f.write(data)

    # the reference: float64 forwards on the float32 weights
    p64 = {k: v.double() for k, v in p32.items()}
    x, y = windows(list(data))
    lf = held_out_loss(p64, x, y)
    w32 = {s: (p32["wte"] if s == "lm_head" else p32[s + ".w"]) for s in sites()}
    deltas, losses = {}, {}
    for fmt, bits in (("int8", 8), ("int4", 4)):
        deltas[fmt], losses[fmt] = {}, {}
        for s in sites():
            lq = held_out_loss(p64, x, y, {s: fake_quant(w32[s], bits).double()})
            losses[fmt][s] = lq
            deltas[fmt][s] = lq - lf
    out = {
        "provenance": {
            "command": "/usr/bin/python3 tests/tools/make_delta_fixture.py",
            "torch": torch.__version__,
            "numpy": np.__version__,
            "seed": SEED,
            "training": {"steps": STEPS, "batch": BATCH, "lr": LR, "optimizer": "Adam",
                         "data": "datasets/text/licenses.txt without data.txt's held-out bytes"},
            "data": "data.txt",
            "data_sha256": hashlib.sha256(data).hexdigest(),
            "reference_dtype": "float64 forward on float32 weights",
            "quantization": "per output channel, symmetric restricted range, scale = "
                            "float16(max|row| / (2^(b-1) - 1)), round half to even "
                            "(torch.fake_quantize_per_channel_affine); lm_head: output "
                            "projection only (tied embedding lookup stays float)",
        },
        "ctx": ctx,
        "held_out_tokens": int(x.numel()),
        "held_out_windows": int(x.shape[0]),
        "float_loss": lf,
        "sites": sites(),
        "loss": losses,
        "deltas": deltas,
    }
    with open(os.path.join(OUT, "deltas.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"float held-out loss {lf:.6f} over {x.numel()} tokens", file=sys.stderr)
    for fmt in deltas:
        print(fmt, " ".join(f"{deltas[fmt][s]:.3g}" for s in sites()), file=sys.stderr)


if __name__ == "__main__":
    main()
