#!/usr/bin/python3
"""make_svd_fixtures.py - writes the fixtures the linear-algebra and correction tests compare with.

Run with Debian's python3 (it needs python3-numpy):
    /usr/bin/python3 tests/tools/make_svd_fixtures.py          # from the repository root

Writes, for each fixture NAME,
  tests/fixtures/svd_NAME.bin   the input arrays, float32 little-endian, row-major, concatenated
  tests/fixtures/svd_NAME.json  where each array sits in the .bin ("offset" in floats, "shape")
                                and the reference results computed here by numpy in float64

Singular-value fixtures (numpy.linalg.svd of the float32 matrix, promoted to float64):
  tall (40 x 25) and wide (17 x 50) Gaussian; decay (64 x 64) with singular values 0.8^i from
  random orthogonal factors; rankdef (30 x 20) of rank 4 (the float32 rounding leaves the other 16
  values at ~1e-7 of the top, which the C test compares with an absolute floor).

Correction fixture "corr": a weight error E (12 x 16), correlated calibration inputs X (200 x 16),
their autocorrelation rxx = X^T X / 200 and scales s = mean |X| (both rounded to float32 and then
used as given), and numpy's LoRC, L2QER and exact QERA corrections of rank 3 (REFERENCES.md
"Corrections"); and a ridge map problem (yq, yf: 100 x 6, lambda = 0.1) solved by numpy's lstsq
on the stacked system [Yq; sqrt(lambda) I] A = [Yf; 0] with centred columns - a different route
from the C code's normal equations.

Everything is seeded: re-running reproduces the files byte for byte.
"""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures")


def write(name, arrays, results, note):
    blob = bytearray()
    index = {}
    for key, a in arrays.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        index[key] = {"offset": len(blob) // 4, "shape": list(a.shape)}
        blob += a.tobytes()
    with open(os.path.join(OUT, "svd_%s.bin" % name), "wb") as f:
        f.write(bytes(blob))
    meta = {
        "name": name,
        "note": note,
        "generator": "tests/tools/make_svd_fixtures.py",
        "numpy": np.__version__,
        "dtype": "float32 little-endian, row-major",
        "arrays": index,
        "results": results,
    }
    with open(os.path.join(OUT, "svd_%s.json" % name), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def as_list(a):
    return [float(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def svd_fixture(name, a, note):
    a = a.astype(np.float32)
    sv = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    write(name, {"a": a}, {"sv": as_list(sv)}, note)


def truncate(m, r):
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def main():
    rng = np.random.default_rng(20240611)
    svd_fixture("tall", rng.standard_normal((40, 25)), "Gaussian 40 x 25")
    svd_fixture("wide", rng.standard_normal((17, 50)), "Gaussian 17 x 50")
    q1, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    q2, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    svd_fixture("decay", (q1 * 0.8 ** np.arange(64)) @ q2.T, "64 x 64, singular values 0.8^i")
    svd_fixture("rankdef", rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20)),
                "30 x 20 of rank 4")

    # Corrections: correlated inputs so that QERA, L2QER and LoRC all differ.
    out_f, in_f, n, r, damp = 12, 16, 200, 3, 0.01
    e = (0.1 * rng.standard_normal((out_f, in_f))).astype(np.float32)
    mix = rng.standard_normal((in_f, in_f)) * (0.5 ** np.arange(in_f))[:, None]
    x = (rng.standard_normal((n, in_f)) @ mix + 0.3 * rng.standard_normal((n, in_f))).astype(
        np.float32)
    x64 = x.astype(np.float64)
    rxx = (x64.T @ x64 / n).astype(np.float32)
    s = np.abs(x64).mean(axis=0).astype(np.float32)
    e64, rxx64, s64 = e.astype(np.float64), rxx.astype(np.float64), s.astype(np.float64)
    lorc = truncate(e64, r)
    lqer = truncate(e64 * s64[None, :], r) / s64[None, :]
    rd = rxx64 + damp * np.trace(rxx64) / in_f * np.eye(in_f)
    w, q = np.linalg.eigh(rd)
    half = (q * np.sqrt(w)) @ q.T
    ihalf = (q / np.sqrt(w)) @ q.T
    qera = truncate(e64 @ half, r) @ ihalf

    # Ridge map: yf = yq A + b + noise, solved as an augmented least-squares problem.
    nr, d, lam = 100, 6, 0.1
    yq = rng.standard_normal((nr, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    yf = yq @ (np.eye(d) + 0.1 * rng.standard_normal((d, d))) + 0.5 + 0.05 * rng.standard_normal(
        (nr, d))
    yq, yf = yq.astype(np.float32), yf.astype(np.float32)
    yq64, yf64 = yq.astype(np.float64), yf.astype(np.float64)
    mq, mf = yq64.mean(axis=0), yf64.mean(axis=0)
    lhs = np.vstack([yq64 - mq, np.sqrt(lam) * np.eye(d)])
    rhs = np.vstack([yf64 - mf, np.zeros((d, d))])
    at = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    b = mf - mq @ at

    write("corr", {"e": e, "x": x, "rxx": rxx, "s": s, "yq": yq, "yf": yf},
          {"rank": r, "damp": damp, "lorc": as_list(lorc), "lqer": as_list(lqer),
           "qera": as_list(qera), "ridge_lambda": lam, "ridge_at": as_list(at),
           "ridge_b": as_list(b)},
          "weight error E (12 x 16), inputs X (200 x 16), rxx = X^T X / n, s = mean |X|; "
          "rank-3 LoRC / L2QER / exact QERA (damp 0.01) in float64; ridge map (lambda 0.1)")


if __name__ == "__main__":
    main()
