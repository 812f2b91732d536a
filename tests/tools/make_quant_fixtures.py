#!/usr/bin/python3
"""make_quant_fixtures.py - integer fake-quantization fixtures from PyTorch.

Writes tests/fixtures/quant_torch.bin (little-endian float32 arrays) and quant_torch.json (the
cases: format, qscope options, offsets into the .bin in floats, zero points). The input is a
(16, 64) random matrix; each case computes its scales the way qscope's REFERENCES.md defines them
(symmetric restricted: s = amax / (2^(B-1)-1); full range: s = amax / ((2^B-1)/2); asymmetric:
s = (max - min) / (2^B-1) with min <= 0 <= max, z = round(-min / s)), rounded to float16 (or kept
float32 for scale=f32), and then runs PyTorch's own fake quantizers on them:
torch.fake_quantize_per_channel_affine / torch.fake_quantize_per_tensor_affine (groups: the
matrix reshaped to (rows * cols/G, G), one "channel" per group). tests/unit/test_format_torch.c
checks that qs_quant_fake reproduces every output bit for bit and that the packed scales and zero
points equal these.

Run with Debian's python3 (python3-torch, python3-numpy): /usr/bin/python3 tests/tools/make_quant_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
ROWS, COLS = 16, 64


def make_input():
    rng = np.random.default_rng(20240611)
    w = (rng.standard_normal((ROWS, COLS)) * 0.1).astype(np.float32)
    w[3, 7] = 1.25  # outliers, so that clipping has something to do
    w[9, 40] = -0.9
    w[5, :] = np.abs(w[5, :]) + 0.01  # all positive: asymmetric zero point at the bottom
    w[6, :] = -np.abs(w[6, :]) - 0.02  # all negative
    return w


def f16(x):
    """float32 -> float16 (round to nearest even) -> float32."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def percentile_abs(x, p):
    """numpy's default (linear) percentile of |x|, computed the way qscope does: order statistics
    of the float32 values, interpolated in float64, rounded to float32."""
    a = np.sort(np.abs(x.astype(np.float32)).ravel())
    pos = p / 100.0 * (a.size - 1)
    i0 = int(np.floor(pos))
    fr = pos - i0
    v0 = float(a[i0])
    v1 = float(a[i0 + 1]) if (fr > 0 and i0 + 1 < a.size) else v0
    return np.float32(v0 + (v1 - v0) * fr)


def sym_params(blocks, bits, full, clip, rounder):
    """blocks: (nb, L) float32. Returns scales (nb,) float32 and zero points (nb,) int."""
    q = np.float32((2 ** bits - 1) / 2.0) if full else np.float32(2 ** (bits - 1) - 1)
    scales = []
    for b in blocks:
        amax = np.float32(np.max(np.abs(b)))
        if clip[0] == "pct":
            amax = min(amax, percentile_abs(b, clip[1]))
        scales.append(rounder(np.float32(amax) / q))
    return np.array(scales, dtype=np.float32), np.zeros(len(blocks), dtype=np.int64)


def asym_params(blocks, bits, rounder):
    qm = np.float32(2 ** bits - 1)
    scales, zeros = [], []
    for b in blocks:
        lo = min(np.float32(b.min()), np.float32(0.0))
        hi = max(np.float32(b.max()), np.float32(0.0))
        s = rounder(np.float32(hi - lo) / qm)
        z = 0
        if s > 0:
            z = int(np.clip(np.round(np.float32(-lo) / np.float32(s)), 0, 2 ** bits - 1))
        scales.append(s)
        zeros.append(z)
    return np.array(scales, dtype=np.float32), np.array(zeros, dtype=np.int64)


def fake(blocks, scales, zeros, qmin, qmax, per_tensor):
    x = torch.from_numpy(np.ascontiguousarray(blocks))
    if per_tensor:
        return torch.fake_quantize_per_tensor_affine(x, float(scales[0]), int(zeros[0]), qmin,
                                                     qmax).numpy()
    return torch.fake_quantize_per_channel_affine(
        x, torch.from_numpy(scales), torch.from_numpy(zeros.astype(np.int32)), 0, qmin,
        qmax).numpy()


def run_case(w, bits, gran, asym=False, full=False, clip=("max",), f32=False):
    """gran: 'tensor', 'channel' or an int group size."""
    rounder = (lambda v: np.float32(v)) if f32 else (lambda v: f16(v)[()])
    if gran == "tensor":
        blocks = w.reshape(1, -1)
    elif gran == "channel":
        blocks = w
    else:
        blocks = w.reshape(-1, gran)
    if clip[0] == "mse":
        return mse_case(w, blocks, bits, gran, rounder)
    if asym:
        scales, zeros = asym_params(blocks, bits, rounder)
        qmin, qmax = 0, 2 ** bits - 1
    else:
        scales, zeros = sym_params(blocks, bits, full, clip, rounder)
        qmin = -(2 ** (bits - 1)) if full else -(2 ** (bits - 1) - 1)
        qmax = 2 ** (bits - 1) - 1
    out = fake(blocks, scales, zeros, qmin, qmax, gran == "tensor").reshape(w.shape)
    return out, scales, zeros


def mse_case(w, blocks, bits, gran, rounder):
    """clip=mse: ratio grid 1, 0.995, ..., 0.5 of amax; the smallest squared error wins, ties keep
    the larger ratio (qscope's search)."""
    q = np.float32(2 ** (bits - 1) - 1)
    outs, scales = [], []
    for b in blocks:
        amax = float(np.float32(np.max(np.abs(b))))
        best, best_out, best_s = None, None, None
        for k in range(101):
            ratio = 1.0 - 0.005 * k
            s = rounder(np.float32(amax * ratio) / q)
            if s > 0:
                o = fake(b.reshape(1, -1), np.array([s], np.float32), np.zeros(1, np.int64),
                         -int(q), int(q), True).ravel()
            else:
                o = np.zeros_like(b)
            sse = float(np.sum((b.astype(np.float64) - o.astype(np.float64)) ** 2))
            if best is None or sse < best:
                best, best_out, best_s = sse, o, s
        outs.append(best_out)
        scales.append(best_s)
    return (np.stack(outs).reshape(w.shape), np.array(scales, dtype=np.float32),
            np.zeros(len(scales), dtype=np.int64))


CASES = [
    # name, format, qscope options, kwargs of run_case
    ("int4_channel", "int4", ["gran=channel"], dict(bits=4, gran="channel")),
    ("int8_channel", "int8", ["gran=channel"], dict(bits=8, gran="channel")),
    ("int4_tensor", "int4", [], dict(bits=4, gran="tensor")),
    ("int8_tensor_full", "int8", ["range=full"], dict(bits=8, gran="tensor", full=True)),
    ("int4_channel_full", "int4", ["gran=channel", "range=full"],
     dict(bits=4, gran="channel", full=True)),
    ("int4_channel_asym", "int4", ["gran=channel", "asym"],
     dict(bits=4, gran="channel", asym=True)),
    ("int8_tensor_asym", "int8", ["asym"], dict(bits=8, gran="tensor", asym=True)),
    ("int3_group32_asym", "int3", ["gran=group:32", "asym"],
     dict(bits=3, gran=32, asym=True)),
    ("int4_group16", "int4", ["gran=group:16"], dict(bits=4, gran=16)),
    ("int2_group8", "int2", ["gran=group:8"], dict(bits=2, gran=8)),
    ("int4_channel_f32", "int4", ["gran=channel", "scale=f32"],
     dict(bits=4, gran="channel", f32=True)),
    ("int8_tensor_pct", "int8", ["clip=pct:99.5"], dict(bits=8, gran="tensor", clip=("pct", 99.5))),
    ("int4_channel_pct", "int4", ["gran=channel", "clip=pct:90"],
     dict(bits=4, gran="channel", clip=("pct", 90.0))),
    ("int4_channel_mse", "int4", ["gran=channel", "clip=mse"],
     dict(bits=4, gran="channel", clip=("mse",))),
]


def main():
    w = make_input()
    arrays = [w.ravel()]
    off = w.size
    cases = []
    for name, fmt, opts, kw in CASES:
        out, scales, zeros = run_case(w, **kw)
        assert np.all(np.isfinite(out)), name
        cases.append({
            "name": name, "format": fmt, "opts": opts,
            "out_offset": off, "scales_offset": off + out.size, "nscales": int(scales.size),
            "zeros": [int(z) for z in zeros] if kw.get("asym") else [],
        })
        arrays += [out.astype(np.float32).ravel(), scales.astype(np.float32).ravel()]
        off += out.size + scales.size
    data = np.concatenate(arrays).astype("<f4")
    os.makedirs(OUT, exist_ok=True)
    data.tofile(os.path.join(OUT, "quant_torch.bin"))
    meta = {
        "generator": "tests/tools/make_quant_fixtures.py",
        "torch": torch.__version__, "numpy": np.__version__,
        "rows": ROWS, "cols": COLS, "input_offset": 0, "floats": int(data.size),
        "cases": cases,
    }
    with open(os.path.join(OUT, "quant_torch.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote %d cases, %d floats" % (len(cases), data.size), file=sys.stderr)


if __name__ == "__main__":
    main()
