#!/usr/bin/python3
"""torch_quant.py - PyTorch eager fake quantization of a 4096 x 4096 F32 matrix, the reference for
tests/bench/bench_quant.c (DESIGN.md target: qscope >= 10x PyTorch eager).

Prints one line per format, "torch NAME MS" (best of 5, 2 threads), NAME as in bench_quant:
  int4-g128  torch.fake_quantize_per_channel_affine on the matrix reshaped to groups of 128 (the
             group-wise reshape version), scales amax/7 rounded to float16, computed each run;
  fp8-e4m3   per-tensor scale amax/448, then x.to(torch.float8_e4m3fn).float() when this torch has
             float8 dtypes; otherwise (torch < 2.1) the same saturating RNE cast written in torch
             ops (frexp, exp2, round), which is what the line then measures;
  mxfp4      OCP MX: 32-element blocks, shared exponent floor(log2 amax) - 2, E2M1 elements, all
             in torch ops.
Run with Debian's python3: /usr/bin/python3 tests/bench/torch_quant.py
"""
import sys
import time

import torch

N = 4096
REPS = 5


def best_ms(fn, x):
    fn(x)  # warm up
    best = float("inf")
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def int4_g128(x):
    g = x.reshape(-1, 128)
    scale = (g.abs().amax(dim=1) / 7.0).half().float()
    zp = torch.zeros(g.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(g, scale, zp, 0, -7, 7).reshape(x.shape)


def minifloat_cast(y, mbits, emin, maxval):
    """Saturating round-to-nearest-even cast onto a minifloat grid with subnormals."""
    a = y.abs().clamp(max=maxval)
    _, e = torch.frexp(a)                      # a = m * 2^e, m in [0.5, 1)
    e = (e - 1).clamp(min=emin)                # exponent of the binade (subnormals: emin)
    q = torch.exp2((e - mbits).to(torch.float32))
    r = torch.round(a / q) * q                 # torch.round: half to even
    return torch.copysign(r, y)


HAS_FP8 = hasattr(torch, "float8_e4m3fn")


def fp8_e4m3(x):
    s = x.abs().amax() / 448.0
    if HAS_FP8:
        return (x / s).to(torch.float8_e4m3fn).float() * s
    return minifloat_cast(x / s, 3, -6, 448.0) * s


def mxfp4(x):
    b = x.reshape(-1, 32)
    amax = b.abs().amax(dim=1, keepdim=True)
    _, e = torch.frexp(amax)
    shared = ((e - 1) - 2).clamp(-127, 127)    # floor(log2 amax) - emax_elem (E2M1: 2)
    scale = torch.exp2(shared.to(torch.float32))
    return (minifloat_cast(b / scale, 1, 0, 6.0) * scale).reshape(x.shape)


def main():
    torch.set_num_threads(2)
    torch.manual_seed(1)
    x = torch.randn(N, N) * 0.02
    if not HAS_FP8:
        print("torch_quant: torch %s has no float8 dtypes; fp8-e4m3 uses the cast in torch ops"
              % torch.__version__, file=sys.stderr)
    for name, fn in (("int4-g128", int4_g128), ("fp8-e4m3", fp8_e4m3), ("mxfp4", mxfp4)):
        with torch.no_grad():
            print("torch %s %.2f" % (name, best_ms(fn, x)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
