#!/usr/bin/python3
"""make_st_fixture.py - writes the safetensors fixtures the C reader is checked against.

Run with Debian's python3 (it needs python3-torch and python3-numpy):
    /usr/bin/python3 tests/tools/make_st_fixture.py            # from the repository root

Writes
  tests/fixtures/st_torch.safetensors   tensors made by torch/numpy, file written by this script
  tests/fixtures/st_torch.json          what the C test must read back (header facts and values)
  tests/fuzz/corpus/safetensors/*.safetensors   small valid seeds for the fuzz target

The `safetensors` Python package is not in Debian 12, so the container is written here by hand
from the format's definition (8-byte little-endian header length, JSON header padded with spaces,
raw little-endian data), independently of qscope's C writer. The tensor bytes come from torch and
numpy (`tobytes()`), and the F16/BF16 conversions from numpy's and torch's own casts, so the C
half-float code is checked against two independent implementations.

The layout is deliberately awkward: the JSON keys are not in data order, an F16 tensor with an
odd number of elements leaves the next F32 tensor 2-byte aligned, and there is a scalar and an
empty tensor. Everything is seeded, so re-running reproduces the files byte for byte.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPE_NAME = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the 16-bit codes
        t = t.view(torch.int16)
    b = t.numpy().tobytes()
    assert sys.byteorder == "little"
    return b


def write_st(path, tensors, metadata=None, key_order=None):
    """tensors: list of (name, torch tensor) in data order. key_order: header key order.
    Returns the header dict as written."""
    header, blobs, off = {}, [], 0
    entries = {}
    for name, t in tensors:
        b = tensor_bytes(t)
        entries[name] = {"dtype": DTYPE_NAME[t.dtype], "shape": list(t.shape),
                         "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in (key_order or [n for n, _ in tensors]):
        header[name] = entries[name]
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return header, len(hj)


def f16_midpoints():
    """Every value halfway between two adjacent finite positive F16 values (exact in F32),
    sampled, plus the values one F32 ulp either side of each."""
    codes = np.arange(0, 0x7c00, dtype=np.uint16)
    v = codes.view(np.float16).astype(np.float64)
    mids = ((v[:-1] + v[1:]) / 2)[::97].astype(np.float32)
    out = [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))]
    return np.concatenate(out)


def main():
    torch.manual_seed(1234)
    rng = np.random.default_rng(1234)

    # --- the "model": a torch nn.Sequential state dict plus odd dtypes ---
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}

    # conversion samples: F32 sources with ties, overflow edges, subnormals and randoms
    special = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.996, 65520.0, 65536.0, 1e6, -1e6,
                        2.0**-14, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-26, 2.0**-24 * 1.5,
                        2.0**-24 * 2.5, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, np.inf, -np.inf,
                        3.3895314e38, np.float32(np.finfo(np.float32).max),
                        np.float32(np.finfo(np.float32).tiny) / 8],
                       dtype=np.float32)
    scales = np.float32(2.0) ** rng.integers(-30, 20, size=1500).astype(np.float32)
    randoms = (rng.standard_normal(1500).astype(np.float32) * scales).astype(np.float32)
    src = np.concatenate([special, f16_midpoints(), randoms]).astype(np.float32)
    with np.errstate(over="ignore"):
        np_f16 = src.astype(np.float16)                          # numpy's RNE cast
    torch_f16 = torch.from_numpy(src).to(torch.float16)          # c10::Half
    torch_bf16 = torch.from_numpy(src).to(torch.bfloat16)        # c10::BFloat16 (RNE)
    # numpy's F16 -> F32 decode of a spread of codes, NaN/inf included
    codes = np.concatenate([np.arange(0, 65536, 37), [0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00,
                                                      0x7e00, 0xfc00, 0x8001, 0xfbff]])
    codes = codes.astype(np.uint16)
    dec_f16 = codes.view(np.float16)
    dec_f32 = dec_f16.astype(np.float32)

    tensors = [
        ("2.weight", sd["2.weight"].to(torch.float16)),          # F16 (2,4)
        ("odd_f16", torch.randn(3).to(torch.float16)),           # 6 bytes: misaligns what follows
        ("0.weight", sd["0.weight"]),                            # F32 (4,3), 2-byte aligned only
        ("0.bias", sd["0.bias"]),                                # F32 (4,)
        ("2.bias", sd["2.bias"].to(torch.bfloat16)),             # BF16 (2,)
        ("emb", torch.randn(5, 3).to(torch.bfloat16)),           # BF16 (5,3)
        ("scalar", torch.tensor(2.5, dtype=torch.float32)),      # shape []
        ("empty", torch.zeros(0, 4, dtype=torch.float32)),       # zero bytes
        ("f64", torch.tensor([1.0 / 3.0, -2.5e-40, 1e30], dtype=torch.float64)),
        ("i64", torch.tensor([[-3, 7], [2**40 + 1, -(2**53) - 1]], dtype=torch.int64)),
        ("i32", torch.tensor([-2147483648, 2147483647, 5], dtype=torch.int32)),
        ("i16", torch.tensor([-32768, 32767], dtype=torch.int16)),
        ("i8", torch.tensor([-128, 127, 0, -1], dtype=torch.int8)),
        ("u8", torch.tensor([0, 255, 17], dtype=torch.uint8)),
        ("mask", torch.tensor([True, False, True], dtype=torch.bool)),
        ("conv.src", torch.from_numpy(src)),
        ("conv.np_f16", torch.from_numpy(np_f16)),
        ("conv.torch_f16", torch_f16),
        ("conv.torch_bf16", torch_bf16),
        ("dec.codes", torch.from_numpy(dec_f16.copy())),
        ("dec.np_f32", torch.from_numpy(dec_f32)),
    ]
    names = [n for n, _ in tensors]
    key_order = sorted(names, reverse=True)  # header order differs from data order
    meta = {"format": "pt", "producer": "tests/tools/make_st_fixture.py",
            "note": "quote \" backslash \\ tab \t unicode \u00e9"}

    fixdir = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(fixdir, exist_ok=True)
    st_path = os.path.join(fixdir, "st_torch.safetensors")
    header, hlen = write_st(st_path, tensors, meta, key_order)

    expect = {"header_len": hlen, "file_size": os.path.getsize(st_path), "metadata": meta,
              "key_order": key_order, "tensors": []}
    for name, t in tensors:
        h = header[name]
        rec = {"name": name, "dtype": h["dtype"], "shape": h["shape"],
               "data_offsets": h["data_offsets"]}
        if not name.startswith(("conv.", "dec.")):  # those are checked code against code
            if t.dtype == torch.bool:
                rec["values"] = [int(x) for x in t.flatten().tolist()]
            else:
                rec["values"] = [float(x) for x in t.to(torch.float32).flatten().tolist()]
        expect["tensors"].append(rec)
    with open(os.path.join(fixdir, "st_torch.json"), "w") as f:
        json.dump(expect, f, indent=1, allow_nan=False)
        f.write("\n")

    # --- fuzz seeds: small, valid, varied ---
    cdir = os.path.join(ROOT, "tests", "fuzz", "corpus", "safetensors")
    os.makedirs(cdir, exist_ok=True)
    write_st(os.path.join(cdir, "basic.safetensors"),
             [("w", torch.arange(6, dtype=torch.float32).reshape(2, 3))], {"k": "v"})
    write_st(os.path.join(cdir, "sequential.safetensors"),
             [("0.weight", sd["0.weight"]), ("0.bias", sd["0.bias"]),
              ("2.weight", sd["2.weight"]), ("2.bias", sd["2.bias"])], {"format": "pt"})
    write_st(os.path.join(cdir, "mixed.safetensors"),
             [("h", torch.tensor([1.0, -2.0, 65504.0], dtype=torch.float16)),
              ("f", torch.tensor([0.5, -0.25], dtype=torch.float32)),
              ("b", torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)),
              ("s", torch.tensor(7.0)), ("z", torch.zeros(0, 2)),
              ("m", torch.tensor([True, False]))], None, ["z", "m", "b", "s", "h", "f"])
    write_st(os.path.join(cdir, "ints.safetensors"),
             [("d", torch.tensor([1.5, -2.0], dtype=torch.float64)),
              ("l", torch.tensor([1, -1], dtype=torch.int64)),
              ("i", torch.tensor([3], dtype=torch.int32)),
              ("s", torch.tensor([-4, 4], dtype=torch.int16)),
              ("c", torch.tensor([-5], dtype=torch.int8)),
              ("u", torch.tensor([250], dtype=torch.uint8))],
             {"a": "1", "b": ""})
    print("wrote", st_path, "(%d bytes, header %d)" % (expect["file_size"], hlen))


if __name__ == "__main__":
    main()
