#!/usr/bin/python3
"""make_gptq_fixture.py - GPTQ results computed by PyTorch in float64, for test_methods.c.

The algorithm follows the GPTQ paper (Frantar et al., 2023, Algorithm 1) the way the authors'
reference implementation (IST-DASLab/gptq, gptq.py `fasterquant`) runs it: dead inputs get
H_jj = 1 and W[:, j] = 0; damping percdamp * mean(diag H); Hinv = upper Cholesky factor of
H^-1 via torch.linalg.cholesky / cholesky_inverse / cholesky(upper=True); lazy batches of
`block` columns; act order by torch.argsort(diag H, descending); with groups either fitted when
a group's first column is reached or, with act order, all fitted up front from W ("static
groups"). Its quantizer is that implementation's min/max one: symmetric s = 2 amax / (2^B - 1),
codes clamp(round(x / s) + 2^(B-1), 0, 2^B - 1) - 2^(B-1) (qscope: int B range=full); asymmetric
s = (max - min) / (2^B - 1), z = round(-min / s) with min <= 0 <= max (qscope: int B asym).
qscope runs the same cases with scale=f32 (scales unrounded, as here).

The cases keep to where qscope's definitions and the reference implementation's coincide:
  - group size == batch width (the reference fits a group that starts inside a batch from
    weights missing that batch's earlier updates; qscope uses the updated ones);
  - the dead input's weights are 0 already (the reference fits per-channel scales before
    zeroing dead columns; qscope after).

Writes tests/fixtures/gptq_torch.bin (little-endian float32: W, X, then each case's Q) and
tests/fixtures/gptq_torch.json (shapes, offsets in floats, the cases).
Run from the repository root: /usr/bin/python3 tests/tools/make_gptq_fixture.py
"""
import json
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
ROWS, COLS, N = 24, 64, 400
DEAD = 9


def fit(x, bits, sym):
    """Scale and zero point per row of x (min/max, as the reference quantizer)."""
    maxq = 2 ** bits - 1
    z0 = torch.zeros(x.shape[0], dtype=x.dtype)
    lo = torch.minimum(x.min(1)[0], z0)
    hi = torch.maximum(x.max(1)[0], z0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    both0 = (lo == 0) & (hi == 0)
    lo = torch.where(both0, -torch.ones_like(lo), lo)
    hi = torch.where(both0, torch.ones_like(hi), hi)
    s = (hi - lo) / maxq
    z = torch.full_like(s, (maxq + 1) / 2) if sym else torch.round(-lo / s)
    return s.unsqueeze(1), z.unsqueeze(1)


def quant(w, s, z, bits):
    q = torch.clamp(torch.round(w / s) + z, 0, 2 ** bits - 1)
    return s * (q - z)


def gptq(W, H, bits, sym, block, group, act, damp=0.01):
    W = W.clone()
    H = H.clone()
    n = W.shape[1]
    s_all, z_all = fit(W, bits, sym)  # per channel, from W as given
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if group > 0 and act:
        groups = [fit(W[:, g:g + group], bits, sym) for g in range(0, n, group)]
    perm = torch.argsort(torch.diag(H), descending=True) if act else torch.arange(n)
    W = W[:, perm]
    H = H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    s, z = s_all, z_all
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i
            if group > 0:
                if act:
                    s, z = groups[int(perm[j]) // group]
                elif j % group == 0:
                    s, z = fit(W[:, j:j + group], bits, sym)
            w = W1[:, i]
            q = quant(w.unsqueeze(1), s, z, bits).flatten()
            Q[:, j] = q
            e = (w - q) / U[j, j]
            W1[:, i:] -= e.unsqueeze(1) * U[j, i1 + i:i2].unsqueeze(0)
            E1[:, i] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


def main():
    rng = np.random.default_rng(20261201)
    z = rng.standard_normal((N, COLS))
    x = z + 0.6 * np.roll(z, -1, axis=1) + 0.3 * np.roll(z, -5, axis=1)
    x *= 0.2 + 1.8 * np.arange(COLS) / COLS
    x[:, DEAD] = 0.0
    x = x.astype(np.float32)
    w = (0.5 * rng.standard_normal((ROWS, COLS))).astype(np.float32)
    w[:, DEAD] = 0.0
    X = torch.from_numpy(x).double()
    W = torch.from_numpy(w).double()
    H = 2.0 * X.t() @ X
    cases = [
        # bits, sym, block, group (0: per channel), act order
        (4, True, 16, 0, False),
        (3, True, 128, 0, True),
        (4, False, 16, 16, False),
        (3, True, 32, 32, False),
        (4, True, 8, 16, True),
        (2, False, 128, 0, False),
    ]
    blobs = [w.ravel(), x.ravel()]
    off = w.size + x.size
    meta = {"source": "tests/tools/make_gptq_fixture.py, torch " + torch.__version__,
            "rows": ROWS, "cols": COLS, "n": N, "w": 0, "x": w.size, "cases": []}
    for bits, sym, block, group, act in cases:
        q = gptq(W, H, bits, sym, block, group, act).float().numpy()
        gran = "gran=group:%d" % group if group else "gran=channel"
        opts = "%s %s scale=f32" % (gran, "range=full" if sym else "asym")
        meta["cases"].append({"format": "int%d" % bits, "opts": opts, "block": block,
                              "act_order": int(act), "q": off})
        blobs.append(q.ravel())
        off += q.size
    np.concatenate(blobs).astype("<f4").tofile(os.path.join(OUT, "gptq_torch.bin"))
    with open(os.path.join(OUT, "gptq_torch.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
