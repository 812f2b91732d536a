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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_grad_fixture import gpt2_block, gpt2_params, read_st  # noqa: E402


def quant_rows(w, bits):
    """Symmetric round-to-nearest-even per output row, scale max|row| / qmax (float32 scales)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.to(torch.float32)
    s = w32.abs().amax(1, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    inv = 1.0 / s
    q = torch.clamp(torch.round(w32 * inv), -qmax - 1, qmax)
    return (q * s).to(torch.float64)


def preact(cfg, p, idx, site):
    """The pre-activation of site (rows of every window) in the float64 forward."""
    x = p["wte.weight"][idx] + p["wpe.weight"][: idx.shape[1]]
    cap = {}
    for i in range(cfg["n_layer"]):
        x = gpt2_block(cfg, p, x, i, cap)
        if site in cap:
            return cap[site]
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
