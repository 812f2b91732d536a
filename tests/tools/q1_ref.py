#!/usr/bin/python3
"""q1_ref.py - an independent float64 check of the Q1 recovery R of one transformer site: the
ridge map from the quantized to the float pre-activations, float and with the map's own weights
quantized int4/int8 per output row, as `correct SITE linear prec=P` and `study q1` compute it
(REFERENCES.md "Ridge recovery map"; src/analysis/ridge.c for the rank cut).

Everything is written here in torch/numpy (Debian's python3-torch): the GPT-2 forward (from
make_grad_fixture.py, float64), int4 per-channel symmetric round-to-nearest weights, the split
(bytes of the text; the last 10 % held out; calibration = the first 8 windows of ctx tokens;
the held-out windows the analyses stream = the first min(held-out, calibration) windows), the
centred ridge with lambda = 1e-6 tr(G)/d and the eigen-directions at or below 1e-6 of the largest
dropped, and the recovery R = 1 - |Yf - Yhat|^2 / |Yf - Yq|^2.

    /usr/bin/python3 tests/tools/q1_ref.py MODEL_DIR TEXT SITE
prints one line per map precision: "prec R_heldout R_calib lambda rank".
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_grad_fixture import gpt2_params, read_st  # noqa: E402


def quant_rows(w, bits):
    """Symmetric round-to-nearest-even per output row, scale max|row| / qmax (float32 scales)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.to(torch.float32)
    s = w32.abs().amax(1, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    inv = 1.0 / s
    q = torch.clamp(torch.round(w32 * inv), -qmax - 1, qmax)
    return (q * s).to(torch.float64)


def block_capture(cfg, p, x, i, want, out):
    """GPT-2 block i (as make_grad_fixture.gpt2_block) recording site pre-activations."""
    import math
    d, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    B, T, _ = x.shape
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def lin(a, s):
        y = F.linear(a, p[s + ".weight"], p[s + ".bias"])
        if s == want:
            out.append(y.reshape(-1, y.shape[-1]))
        return y

    sh = lambda t: t.view(B, T, H, d // H).transpose(1, 2)  # noqa: E731
    h = f"h.{i}."
    a = F.layer_norm(x, (d,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
    q, k, v = lin(a, h + "attn.c_attn").split(d, -1)
    s = (sh(q) @ sh(k).transpose(-1, -2)) / math.sqrt(d // H)
    s = s.masked_fill(~mask, float("-inf"))
    a = (torch.softmax(s, -1) @ sh(v)).transpose(1, 2).reshape(B, T, d)
    x = x + lin(a, h + "attn.c_proj")
    m = F.layer_norm(x, (d,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
    u = lin(m, h + "mlp.c_fc")
    m = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    return x + lin(m, h + "mlp.c_proj")


def preact(cfg, p, idx, site):
    d = cfg["n_embd"]
    x = p["wte.weight"][idx] + p["wpe.weight"][: idx.shape[1]]
    out = []
    for i in range(cfg["n_layer"]):
        x = block_capture(cfg, p, x, i, site, out)
        if out:
            return out[0]
    raise SystemExit(f"no site {site}")


def main():
    folder, text, site = sys.argv[1:4]
    cfg = json.load(open(os.path.join(folder, "config.json")))
    p = gpt2_params(cfg, read_st(os.path.join(folder, "model.safetensors")))
    pq = {k: (quant_rows(v, 4) if k.endswith(".weight") and ("attn." in k or "mlp." in k) else v)
          for k, v in p.items()}
    tok = np.frombuffer(open(text, "rb").read(), np.uint8).astype(np.int64)
    n, ctx = len(tok), cfg["n_ctx"]
    off = n - n // 10
    cw = min(8, off // ctx)
    tw = min((n - off - 1) // ctx, cw)
    cal = torch.tensor(tok[: cw * ctx].reshape(cw, ctx))
    held = torch.tensor(tok[off: off + tw * ctx].reshape(tw, ctx))
    yf_c, yq_c = preact(cfg, p, cal, site), preact(cfg, pq, cal, site)
    yf_t, yq_t = preact(cfg, p, held, site), preact(cfg, pq, held, site)
    d = yq_c.shape[1]
    mq, mf = yq_c.mean(0), yf_c.mean(0)
    xc, tc = yq_c - mq, yf_c - mf
    G = xc.T @ xc
    lam = 1e-6 * torch.trace(G).item() / d
    e, V = torch.linalg.eigh(G)
    keep = e > 1e-6 * e.max()
    Vk, ek = V[:, keep], e[keep]
    At = Vk @ torch.diag(1.0 / (ek + lam)) @ Vk.T @ (xc.T @ tc)  # (d, d): A^T
    b = mf - mq @ At
    A = At.T.contiguous()

    def R(yf, yq, A_):
        yh = yq @ A_.T + b
        return 1.0 - ((yf - yh) ** 2).sum().item() / ((yf - yq) ** 2).sum().item()

    for prec, A_ in (("float", A), ("int8", quant_rows(A, 8)), ("int4", quant_rows(A, 4))):
        print(f"{prec} {R(yf_t, yq_t, A_):.4f} {R(yf_c, yq_c, A_):.4f} {lam:.6g} "
              f"{int(keep.sum())}")


if __name__ == "__main__":
    main()
