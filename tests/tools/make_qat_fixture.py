#!/usr/bin/python3
"""make_qat_fixture.py - PyTorch autograd's gradient of one straight-through (STE) step of
quantization-aware training, the reference for qscope's transformer QAT hooks (src/analysis/qat.c
qs_qat_hooks, through src/model/lm_grad.c; tests/unit/test_qat_lm.c).

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_qat_fixture.py

Writes tests/fixtures/lm_qat.json: the whole model's step ("cases") and one block alone under
the block-reconstruction loss ("blocks", see block_case). The models are built by make_grad_fixture.py's own torch code
(imported: GPT-2 and LLaMA written out in plain torch, float64). The straight-through
fake-quantization is the textbook one:
    w_q = w + (q(w) - w).detach()        every site weight (a tied head: the output projection
                                         only, the embedding lookup stays float)
    x_q = x + (q(x) - x).detach()        the input of every site of one block
so that dL/dw = dL/dw_q and dL/dx = dL/dx_q (dx = dy). q() is computed in float32 exactly as
qscope's quantizer defines it (tests/unit/test_format_torch.c checks it bit for bit):
  weights: int3 symmetric restricted, one scale per output channel
           s = float16(max|row| / 3), torch.fake_quantize_per_channel_affine(w, s, 0, 0, -3, 3)
  inputs:  int8 symmetric restricted, one scale for the whole tensor (all B T rows of the batch,
           as qs_lm_backward passes them), s = float16(max|x| / 127),
           torch.fake_quantize_per_tensor_affine(x, s, 0, -127, 127)
The rest of the forward and the backward run in float64. Per parameter tensor the fixture keeps
make_grad_fixture.py's statistics (norm, two sign projections, sampled entries) of the gradient
and the mean loss; one case also keeps the float model's loss (no quantization), so that a test
can tell the STE gradient from the float one.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_grad_fixture as G  # noqa: E402

ROOT = G.ROOT
OUT = os.path.join(ROOT, "tests", "fixtures", "lm_qat.json")
SEED = 20261202
CASES = [  # folder, windows, tokens per window, the block whose site inputs are quantized
    ("tests/fixtures/delta_gpt2", 4, 32, 1),
    ("tests/fixtures/lm_llama_gqa", 3, 16, 0),
]


def wq(w):
    """int3 per-channel fake quantization of a float64 (out, in) tensor, computed in float32."""
    w32 = w.detach().float()
    s = (w32.abs().amax(1) / np.float32(3)).half().float()
    z = torch.zeros(w32.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w32, s, z, 0, -3, 3).double()


def xq(x):
    """int8 per-tensor dynamic fake quantization (all rows of the batch), in float32."""
    x32 = x.detach().float()
    s = float((x32.abs().amax() / np.float32(127)).half().float())
    return torch.fake_quantize_per_tensor_affine(x32, s, 0, -127, 127).double()


class STE:
    """Wraps F.linear: the site's weight and (in block `blk`) its input straight-through."""

    def __init__(self, names, blk):
        self.names, self.blk, self.orig = names, blk, F.linear

    def __call__(self, x, w, b=None):
        name = self.names.get(id(w))
        if name is None:
            return self.orig(x, w, b)
        w = w + (wq(w) - w).detach()
        if self.blk is not None and (f"h.{self.blk}." in name or f"layers.{self.blk}." in name):
            x = x + (xq(x) - x).detach()
        return self.orig(x, w, b)


def case(folder, B, T, blk, rng, text):
    with open(os.path.join(ROOT, folder, "config.json")) as f:
        cfg = json.load(f)
    st = G.read_st(os.path.join(ROOT, folder, "model.safetensors"))
    gpt2 = cfg["model_type"] == "gpt2"
    p = G.gpt2_params(cfg, st) if gpt2 else G.llama_params(cfg, st)
    p = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    V = cfg["vocab_size"]
    starts = sorted(int(s) for s in rng.choice(len(text) - T - 1, B, replace=False))
    win = [[text[s + t] % V for t in range(T + 1)] for s in starts]
    w = torch.tensor(win, dtype=torch.long)
    fwd = G.gpt2_forward if gpt2 else G.llama_forward
    with torch.no_grad():
        lf = float(F.cross_entropy(fwd(cfg, p, w[:, :T]).reshape(-1, V), w[:, 1:].reshape(-1)))
    # every 2-D weight that F.linear sees is a site (the head: the embedding, tied or not)
    names = {id(v): k for k, v in p.items() if v.dim() == 2 and "wpe" not in k}
    ste = STE(names, blk)
    F.linear = ste
    try:
        logits = fwd(cfg, p, w[:, :T])
    finally:
        F.linear = ste.orig
    loss = F.cross_entropy(logits.reshape(-1, V), w[:, 1:].reshape(-1))
    loss.backward()
    tensors = []
    for name, t in p.items():
        tensors.append(dict(name=name, shape=list(t.shape), **G.stats(t.grad.numpy(), rng)))
    return {"model": folder, "B": B, "T": T, "act_block": blk, "windows": win,
            "loss": float(loss), "float_loss": lf, "tensors": tensors}


BLOCKS = [  # folder, windows, tokens per window, the block, straight-through on (else float)
    ("tests/fixtures/delta_gpt2", 3, 32, 1, True),
    ("tests/fixtures/lm_llama_gqa", 2, 16, 0, True),
    ("tests/fixtures/lm_llama_gqa", 2, 16, 1, False),
]


def block_case(folder, B, T, blk, ste_on, rng, text):
    """One block alone (qat mode=block's step, lm_grad.c qs_lm_block): its input x is the token
    (+ position) embedding of the windows, its target x itself, the loss mean((block(x) - x)^2)
    over every entry; straight-through as in case() on every site of the block when ste_on.
    Kept: the loss and the gradient statistics of the block's own tensors."""
    with open(os.path.join(ROOT, folder, "config.json")) as f:
        cfg = json.load(f)
    st = G.read_st(os.path.join(ROOT, folder, "model.safetensors"))
    gpt2 = cfg["model_type"] == "gpt2"
    p = G.gpt2_params(cfg, st) if gpt2 else G.llama_params(cfg, st)
    p = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    V = cfg["vocab_size"]
    starts = sorted(int(s) for s in rng.choice(len(text) - T - 1, B, replace=False))
    win = [[text[s + t] % V for t in range(T + 1)] for s in starts]
    idx = torch.tensor(win, dtype=torch.long)[:, :T]
    with torch.no_grad():
        if gpt2:
            x = (p["wte.weight"][idx].float() + p["wpe.weight"][:T].float()).double()
        else:
            x = p["model.embed_tokens.weight"][idx]
    names = {id(v): k for k, v in p.items() if v.dim() == 2 and "wpe" not in k}
    ste = STE(names, blk)
    if ste_on:
        F.linear = ste
    try:
        y = (G.gpt2_block if gpt2 else G.llama_block)(cfg, p, x, blk)
    finally:
        F.linear = ste.orig
    loss = ((y - x) ** 2).mean()
    loss.backward()
    pre = f"h.{blk}." if gpt2 else f"model.layers.{blk}."
    tensors = [dict(name=n, shape=list(t.shape), **G.stats(t.grad.numpy(), rng))
               for n, t in p.items() if n.startswith(pre)]
    return {"model": folder, "B": B, "T": T, "block": blk, "ste": ste_on, "windows": win,
            "mse": float(loss), "tensors": tensors}


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    with open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "rb") as f:
        text = f.read()
    out = {"provenance": {"command": "/usr/bin/python3 tests/tools/make_qat_fixture.py",
                          "torch": torch.__version__, "numpy": np.__version__, "seed": SEED,
                          "weights": "int3 gran=channel (symmetric restricted, f16 scales)",
                          "acts": "int8 gran=tensor dynamic on the sites of block act_block",
                          "reference": "float64 autograd through w + (q(w) - w).detach() and "
                                       "x + (q(x) - x).detach()"},
           "cases": [case(f, B, T, k, rng, text) for f, B, T, k in CASES]}
    out["blocks"] = [block_case(f, B, T, k, q, rng, text) for f, B, T, k, q in BLOCKS]
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    for c in out["cases"]:
        print(f"{c['model']}: STE loss {c['loss']:.6f} (float {c['float_loss']:.6f}), "
              f"{len(c['tensors'])} tensors")


if __name__ == "__main__":
    main()
