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


# ---- learned step sizes (LSQ, Esser et al. 2020) -------------------------------------------
#
# The LSQ forward of a site weight w with block scales s, as the paper's code writes it:
#     s_g = grad_scale(s, g) = (s - s g).detach() + s g,   g = 1 / sqrt(N_block Qp)
#     y = s_g * round_pass(clamp(w / s_g, lo, hi)),  round_pass(x) = x + (round(x) - x).detach()
# so that dy/ds = g (round(v) - v) inside [lo, hi] (clamp's gradient passes on the bounds), g lo
# or g hi outside, and dy/dw = 1 inside, 0 outside. Non-integer formats (fp4-e2m1, NF4) take
# their element cast for round() and [-max, max] for the clamp. The rounded codes are computed
# in float32 exactly as qscope does (v = w * (1 / s), s the F16-stored scale); the rest is
# float64 autograd. The scales: qscope's fit of each block (max clipping), F16, then multiplied
# by 0.8 (even blocks) or 1.15 (odd) and stored in F16 again, so that both branches are hit.

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
NF4_MIDS = np.array([(float(NF4[i]) + float(NF4[i + 1])) / 2 for i in range(15)]).astype(np.float32)


def f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def cast(fmt, v):
    """The element grid value of v (float32 array) at scale 1, and (lo, hi) per element."""
    if fmt["kind"] == "int":
        lo, hi = fmt["lo"], fmt["hi"]
        return np.rint(np.clip(v, lo, hi)).astype(np.float64), lo, hi
    if fmt["kind"] == "e2m1":
        a = np.minimum(np.abs(v), np.float32(6))
        d = np.abs(a[..., None] - E2M1)
        k = np.argmin(d, axis=-1)
        # ties: the even mantissa (0, 1, 2, 4 are codes 0, 2, 4, 6)
        k2 = np.minimum(k + 1, 7)
        tie = (k < 7) & (np.take_along_axis(d, k2[..., None], -1)[..., 0] == d.min(-1))
        k = np.where(tie & (k % 2 == 1), k2, k)
        q = np.sign(v) * E2M1[k]
        return q.astype(np.float64), -6.0, 6.0
    c = (v[..., None] > NF4_MIDS).sum(-1)
    return NF4[c].astype(np.float64), -1.0, 1.0


def blocks(fmt, w32):
    """qscope's fit: per block (rows x nseg, or one) scale, zero point bounds; then perturbed."""
    R, C = w32.shape
    seg = fmt.get("group") or C
    nseg = 1 if fmt["gran"] == "tensor" else -(-C // seg)
    out = []
    for r in range(1 if fmt["gran"] == "tensor" else R):
        for k in range(nseg):
            x = w32 if fmt["gran"] == "tensor" else w32[r, k * seg:(k + 1) * seg]
            amax = np.abs(x).max()
            if fmt["kind"] == "int" and fmt.get("asym"):
                qm = (1 << fmt["bits"]) - 1
                lo, hi = min(x.min(), np.float32(0)), max(x.max(), np.float32(0))
                s = f16(np.float32(hi - lo) / np.float32(qm))
                z = int(np.clip(np.rint(np.float32(-lo) / s), 0, qm))
                b = dict(s=s, lo=-z, hi=qm - z, qp=qm)
            elif fmt["kind"] == "int":
                qmax = (1 << (fmt["bits"] - 1)) - 1
                b = dict(s=f16(amax / np.float32(qmax)), lo=-qmax, hi=qmax, qp=qmax)
            elif fmt["kind"] == "e2m1":
                b = dict(s=f16(amax / np.float32(6)), lo=-6, hi=6, qp=6)
            else:
                b = dict(s=f16(amax), lo=-1, hi=1, qp=1)
            b["s"] = f16(b["s"] * np.float32(0.8 if len(out) % 2 == 0 else 1.15))
            out.append(b)
    return out, seg, nseg


def lsq_weight(fmt, w, s):
    """The LSQ forward of w (float64 leaf, (R, C)) with block scales s (float64 leaf, (nblk,))
    whose stored values (float32) are fmt's blocks'; returns y (R, C)."""
    R, C = w.shape
    blk, seg, nseg = fmt["blocks"], fmt["seg"], fmt["nseg"]
    tensor = fmt["gran"] == "tensor"
    # per block: its gradient scale, bounds; expanded to elements
    col = np.arange(C) // seg if not tensor else np.zeros(C, dtype=int)
    idx = np.zeros((R, C), dtype=int) if tensor else (np.arange(R)[:, None] * nseg + col[None, :])
    cnt = np.bincount(idx.reshape(-1), minlength=len(blk)).astype(np.float64)
    gsc = torch.tensor([1.0 / np.sqrt(cnt[k] * blk[k]["qp"]) for k in range(len(blk))])
    s_g = (s - s * gsc).detach() + s * gsc
    s_el = s_g[torch.tensor(idx)]
    lo = torch.tensor(np.array([b["lo"] for b in blk], dtype=np.float64)[idx])
    hi = torch.tensor(np.array([b["hi"] for b in blk], dtype=np.float64)[idx])
    s32 = np.array([b["s"] for b in blk], dtype=np.float32)[idx]
    v32 = w.detach().numpy().astype(np.float32) * (np.float32(1) / s32)
    if fmt["kind"] == "int":  # per-element bounds (zero points)
        q = np.rint(np.clip(v32, lo.numpy(), hi.numpy()))
    else:
        q, _, _ = cast(fmt, v32)
    v = w / s_el
    vc = torch.clamp(v, lo, hi)
    return s_el * (vc + (torch.tensor(q, dtype=torch.float64) - vc).detach())


def lsq_case(folder, B, T, rng, text):
    """One LSQ step of a whole transformer: every site int3 per channel with learned scales."""
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
    names = {id(v): k for k, v in p.items() if v.dim() == 2 and "wpe" not in k}
    fmts, scales = {}, {}
    for k, v in p.items():
        if id(v) in names:
            fm = dict(kind="int", bits=3, gran="channel", group=None)
            fm["blocks"], fm["seg"], fm["nseg"] = blocks(fm, v.detach().numpy().astype(np.float32))
            fmts[k] = fm
            scales[k] = torch.tensor([float(b["s"]) for b in fm["blocks"]], dtype=torch.float64,
                                     requires_grad=True)
    orig = F.linear

    def lin(x, wt, b=None):
        k = names.get(id(wt))
        if k is not None:
            wt = lsq_weight(fmts[k], wt, scales[k])
        return orig(x, wt, b)

    F.linear = lin
    try:
        logits = (G.gpt2_forward if gpt2 else G.llama_forward)(cfg, p, w[:, :T])
    finally:
        F.linear = orig
    loss = F.cross_entropy(logits.reshape(-1, V), w[:, 1:].reshape(-1))
    loss.backward()
    tensors = [dict(name=n, shape=list(t.shape), **G.stats(t.grad.numpy(), rng))
               for n, t in p.items()]
    site = lambda k: "lm_head" if k in ("wte.weight", "model.embed_tokens.weight") \
        else k[:-len(".weight")]  # noqa: E731
    sc = [dict(site=site(k), n=int(t.numel()), **G.stats(t.grad.numpy(), rng))
          for k, t in scales.items()]
    return {"model": folder, "B": B, "T": T, "windows": win, "loss": float(loss),
            "format": "int3 gran=channel", "tensors": tensors, "scales": sc}


LSQ = [  # folder, windows, tokens per window
    ("tests/fixtures/delta_gpt2", 2, 32),
    ("tests/fixtures/lm_llama_gqa", 2, 16),
]

MLP_FORMATS = [  # qscope's format and options, this script's description
    ("int4", "gran=group:8", dict(kind="int", bits=4, gran="group", group=8)),
    ("int3", "gran=channel asym", dict(kind="int", bits=3, gran="channel", group=None,
                                       asym=True)),
    ("fp4-e2m1", "gran=channel", dict(kind="e2m1", gran="channel", group=None)),
    ("nf4", "gran=group:8", dict(kind="nf4", gran="group", group=8)),
    ("int4", "gran=tensor", dict(kind="int", bits=4, gran="tensor", group=None)),
]


def mlp_lsq(rng):
    """An MLP (24 -> 16 tanh -> 4, biases 0) on 16 samples, mean cross-entropy, both layers
    through LSQ in each of MLP_FORMATS: the scales' gradients in full, the weights' statistics."""
    n, d0, d1, c = 16, 24, 16, 4
    x = rng.standard_normal((n, d0)).astype(np.float32)
    y = rng.integers(0, c, n)
    w0 = (rng.standard_normal((d1, d0)) * 0.3).astype(np.float32)
    w1 = (rng.standard_normal((c, d1)) * 0.4).astype(np.float32)
    cases = []
    for name, opts, desc in MLP_FORMATS:
        ws = [torch.tensor(w0.astype(np.float64), requires_grad=True),
              torch.tensor(w1.astype(np.float64), requires_grad=True)]
        fms, ss = [], []
        for wt in ws:
            fm = dict(desc)
            fm["blocks"], fm["seg"], fm["nseg"] = blocks(fm, wt.detach().numpy().astype(np.float32))
            fms.append(fm)
            ss.append(torch.tensor([float(b["s"]) for b in fm["blocks"]], dtype=torch.float64,
                                   requires_grad=True))
        h = torch.tanh(torch.tensor(x.astype(np.float64)) @ lsq_weight(fms[0], ws[0], ss[0]).T)
        logits = h @ lsq_weight(fms[1], ws[1], ss[1]).T
        loss = F.cross_entropy(logits, torch.tensor(y))
        loss.backward()
        cases.append({"format": name, "opts": opts, "loss": float(loss),
                      "scales": [[float(b["s"]) for b in fm["blocks"]] for fm in fms],
                      "grad_w": [G.stats(wt.grad.numpy(), rng) for wt in ws],
                      "grad_s": [sv.grad.numpy().tolist() for sv in ss]})
    return {"x": x.reshape(-1).tolist(), "y": y.tolist(), "w0": w0.reshape(-1).tolist(),
            "w1": w1.reshape(-1).tolist(), "sizes": [d0, d1, c], "n": n, "act": "tanh",
            "cases": cases}


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
    out["lsq"] = [lsq_case(f, B, T, rng, text) for f, B, T in LSQ]
    out["lsq_mlp"] = mlp_lsq(rng)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    for c in out["cases"]:
        print(f"{c['model']}: STE loss {c['loss']:.6f} (float {c['float_loss']:.6f}), "
              f"{len(c['tensors'])} tensors")


if __name__ == "__main__":
    main()
