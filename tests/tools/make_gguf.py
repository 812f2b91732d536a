#!/usr/bin/python3
"""make_gguf.py - GGUF test files written from the GGUF specification and ggml's block layouts,
independently of qscope and of gguf-py.

    /usr/bin/python3 tests/tools/make_gguf.py OUTDIR

writes into OUTDIR:
  blocks.gguf                 one tensor per ggml type qscope decodes (f32, f16, bf16, q8_0,
                              q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K), random but
                              valid block bytes (finite F16 scales), 2-D and one 3-D tensor
  blocks.expected.safetensors the same tensors dequantized HERE, in float32 with the operations
                              of ggml's dequantize_row_* (each product / sum rounded to float32),
                              shape [ne[n-1], ..., ne[0]]
  align64.gguf                general.alignment = 64, one key of every value type (arrays too)
  iq.gguf                     an iq2_xxs tensor (valid file, a type qscope does not decode)
  bad/*.gguf + bad.json       malformed files, each with the words its one error must contain

Layouts (QK_K = 256, little-endian, F16 = binary16):
  q4_0 d, qs[16]           q4_1 d, m, qs[16]          q5_0 d, qh[4], qs[16]
  q5_1 d, m, qh[4], qs[16] q8_0 d, qs[32] (int8)
  q2_K scales[16], qs[64], d, dmin                q3_K hmask[32], qs[64], scales[12], d
  q4_K d, dmin, scales[12], qs[128]               q5_K d, dmin, scales[12], qh[32], qs[128]
  q6_K ql[128], qh[64], scales[16] (int8), d
"""
import json
import os
import struct
import sys

import numpy as np

F32 = np.float32
rng = np.random.default_rng(1234)

GGML = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q4_1": (3, 32, 20),
        "q5_0": (6, 32, 22), "q5_1": (7, 32, 24), "q8_0": (8, 32, 34), "q2_K": (10, 256, 84),
        "q3_K": (11, 256, 110), "q4_K": (12, 256, 144), "q5_K": (13, 256, 176),
        "q6_K": (14, 256, 210), "bf16": (30, 1, 2), "iq2_xxs": (16, 256, 66)}

# ---- GGUF writer -------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32T, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32T: "<f",
          BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gvalue(t, v):
    if t == STRING:
        return gstr(v)
    if t == ARRAY:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gvalue(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors, align=32, version=3):
    """kvs: [(key, type, value)]; tensors: [(name, ne list, ggml type number, raw bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gvalue(t, v)
    offs, off = [], 0
    for _, _, _, raw in tensors:
        offs.append(off)
        off += len(raw)
        off += (-off) % align
    for (name, ne, ty, _), o in zip(tensors, offs):
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", ty, o)
    out += b"\0" * ((-len(out)) % align)
    data = b""
    for (_, _, _, raw), o in zip(tensors, offs):
        data += b"\0" * (o - len(data)) + raw
    return out + data


# ---- random valid blocks and their dequantization ------------------------------------------------

def f16(vals):
    return np.asarray(vals, dtype=np.float16)


def rand_f16(n, lo, hi):
    return f16(rng.uniform(lo, hi, n))


def u8(n):
    return rng.integers(0, 256, n, dtype=np.uint8)


def h2f(h):  # np.float16 array -> float32 (exact)
    return h.astype(F32)


def block_q4_0():
    d = rand_f16(1, -0.1, 0.1)
    qs = u8(16)
    q = np.concatenate([qs & 15, qs >> 4]).astype(np.int32) - 8
    return d.tobytes() + qs.tobytes(), q.astype(F32) * h2f(d)[0]


def block_q4_1():
    d, m = rand_f16(1, 0.001, 0.1), rand_f16(1, -1, 0)
    qs = u8(16)
    q = np.concatenate([qs & 15, qs >> 4]).astype(F32)
    return d.tobytes() + m.tobytes() + qs.tobytes(), q * h2f(d)[0] + h2f(m)[0]


def fifth(qh, qs):
    h = int.from_bytes(qh.tobytes(), "little")
    lo = np.concatenate([qs & 15, qs >> 4]).astype(np.int32)
    hb = np.array([(h >> i) & 1 for i in range(32)], dtype=np.int32)
    return lo | (hb << 4)


def block_q5_0():
    d, qh, qs = rand_f16(1, -0.1, 0.1), u8(4), u8(16)
    q = fifth(qh, qs) - 16
    return d.tobytes() + qh.tobytes() + qs.tobytes(), q.astype(F32) * h2f(d)[0]


def block_q5_1():
    d, m, qh, qs = rand_f16(1, 0.001, 0.1), rand_f16(1, -1, 0), u8(4), u8(16)
    q = fifth(qh, qs).astype(F32)
    return d.tobytes() + m.tobytes() + qh.tobytes() + qs.tobytes(), q * h2f(d)[0] + h2f(m)[0]


def block_q8_0():
    d = rand_f16(1, -0.05, 0.05)
    qs = rng.integers(-128, 128, 32, dtype=np.int8)
    return d.tobytes() + qs.tobytes(), qs.astype(F32) * h2f(d)[0]


def two_bit_index():
    """(element, qs byte, shift, sub-block) of the 2-bit planes shared by q2_K and q3_K."""
    out = []
    for c in range(2):
        for s in range(4):
            for half in range(2):
                for l in range(16):
                    out.append((128 * c + 32 * s + 16 * half + l, 32 * c + 16 * half + l, 2 * s,
                                8 * c + 2 * s + half, 16 * half + l, 4 * c + s))
    return out


IDX2 = two_bit_index()


def block_q2_K():
    sc, qs = u8(16), u8(64)
    d, dmin = rand_f16(1, 0.001, 0.02), rand_f16(1, 0.001, 0.02)
    dd, dm = h2f(d)[0], h2f(dmin)[0]
    y = np.zeros(256, F32)
    for e, b, sh, j, _, _ in IDX2:
        dl = F32(dd * F32(sc[j] & 15))
        ml = F32(dm * F32(sc[j] >> 4))
        y[e] = F32(dl * F32((qs[b] >> sh) & 3)) - ml
    return sc.tobytes() + qs.tobytes() + d.tobytes() + dmin.tobytes(), y


def q3_scale(s, j):
    lo = s[j] & 15 if j < 8 else s[j - 8] >> 4
    hi = (s[8 + j % 4] >> (2 * (j // 4))) & 3
    return int(lo | (hi << 4)) - 32


def block_q3_K():
    hm, qs, s = u8(32), u8(64), u8(12)
    d = rand_f16(1, -0.02, 0.02)
    dd = h2f(d)[0]
    y = np.zeros(256, F32)
    for e, b, sh, j, hb, bit in IDX2:
        dl = F32(dd * F32(q3_scale(s, j)))
        q = int((qs[b] >> sh) & 3) - (0 if hm[hb] & (1 << bit) else 4)
        y[e] = F32(dl * F32(q))
    return hm.tobytes() + qs.tobytes() + s.tobytes() + d.tobytes(), y


def scale_min_k4(j, q):
    if j < 4:
        return int(q[j] & 63), int(q[j + 4] & 63)
    return int((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4)), int((q[j + 4] >> 4) | ((q[j] >> 6) << 4))


def block_q45_K(five):
    d, dmin = rand_f16(1, 0.001, 0.02), rand_f16(1, 0.001, 0.02)
    s, qs = u8(12), u8(128)
    qh = u8(32) if five else None
    dd, dm = h2f(d)[0], h2f(dmin)[0]
    y = np.zeros(256, F32)
    for c in range(4):
        for half in range(2):
            sc, m = scale_min_k4(2 * c + half, s)
            d1, m1 = F32(dd * F32(sc)), F32(dm * F32(m))
            for l in range(32):
                q = int(qs[32 * c + l] & 15) if half == 0 else int(qs[32 * c + l] >> 4)
                if five and qh[l] & (1 << (2 * c + half)):
                    q += 16
                y[64 * c + 32 * half + l] = F32(d1 * F32(q)) - m1
    raw = d.tobytes() + dmin.tobytes() + s.tobytes() + (qh.tobytes() if five else b"") + qs.tobytes()
    return raw, y


def block_q6_K():
    ql, qh = u8(128), u8(64)
    sc = rng.integers(-128, 128, 16, dtype=np.int8)
    d = rand_f16(1, -0.01, 0.01)
    dd = h2f(d)[0]
    y = np.zeros(256, F32)
    for c in range(2):
        for l in range(32):
            i = l // 16
            L, H, S = ql[64 * c:], qh[32 * c:], sc[8 * c:]
            qv = [(int(L[l] & 15) | (((int(H[l]) >> 0) & 3) << 4)) - 32,
                  (int(L[l + 32] & 15) | (((int(H[l]) >> 2) & 3) << 4)) - 32,
                  (int(L[l] >> 4) | (((int(H[l]) >> 4) & 3) << 4)) - 32,
                  (int(L[l + 32] >> 4) | (((int(H[l]) >> 6) & 3) << 4)) - 32]
            for k in range(4):
                y[128 * c + l + 32 * k] = F32(F32(dd * F32(S[i + 2 * k])) * F32(qv[k]))
    return ql.tobytes() + qh.tobytes() + sc.tobytes() + d.tobytes(), y


BLOCKS = {"q4_0": block_q4_0, "q4_1": block_q4_1, "q5_0": block_q5_0, "q5_1": block_q5_1,
          "q8_0": block_q8_0, "q2_K": block_q2_K, "q3_K": block_q3_K,
          "q4_K": lambda: block_q45_K(False), "q5_K": lambda: block_q45_K(True),
          "q6_K": block_q6_K}


def tensor(tname, ne):
    """Random tensor of ggml type tname with dims ne (fastest first): (raw bytes, float32 values
    in row-major order of the reversed dims)."""
    n = int(np.prod(ne))
    if tname == "f32":
        v = rng.standard_normal(n).astype(F32)
        return v.tobytes(), v
    if tname == "f16":
        v = f16(rng.standard_normal(n))
        return v.tobytes(), v.astype(F32)
    if tname == "bf16":
        v = rng.standard_normal(n).astype(F32)
        b = (v.view(np.uint32) >> 16).astype(np.uint16)
        return b.tobytes(), (b.astype(np.uint32) << 16).view(F32)
    raw, vals = b"", []
    for _ in range(n // GGML[tname][1]):
        r, y = BLOCKS[tname]()
        assert len(r) == GGML[tname][2], tname
        raw += r
        vals.append(y)
    return raw, np.concatenate(vals).astype(F32)


def safetensors(path, named):
    hdr, data = {}, b""
    for k, (shape, v) in named.items():
        b = np.ascontiguousarray(v, dtype=F32).tobytes()
        hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def main(out):
    os.makedirs(os.path.join(out, "bad"), exist_ok=True)
    tensors, expected = [], {}
    plan = [("f32", [8, 3]), ("f16", [16, 2]), ("bf16", [16, 2])]
    plan += [(t, [64, 3]) for t in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")]
    plan += [(t, [512, 2]) for t in ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K")]
    plan += [("q8_0", [32, 2, 2])]
    for i, (t, ne) in enumerate(plan):
        name = "t%d.%s" % (i, t)
        raw, v = tensor(t, ne)
        tensors.append((name, ne, GGML[t][0], raw))
        expected[name] = (list(reversed(ne)), v)
    kvs = [("general.architecture", STRING, "test"), ("general.name", STRING, "blocks")]
    open(os.path.join(out, "blocks.gguf"), "wb").write(gguf(kvs, tensors))
    safetensors(os.path.join(out, "blocks.expected.safetensors"), expected)

    kv_all = [("general.alignment", U32, 64), ("k.u8", U8, 200), ("k.i8", I8, -5),
              ("k.u16", U16, 60000), ("k.i16", I16, -30000), ("k.u32", U32, 4000000000),
              ("k.i32", I32, -2000000000), ("k.f32", F32T, 0.5), ("k.bool", BOOL, 1),
              ("k.str", STRING, "h\u00e9llo"), ("k.u64", U64, 2 ** 40), ("k.i64", I64, -(2 ** 40)),
              ("k.f64", F64, 0.125), ("k.arr_i32", ARRAY, (I32, [1, -2, 3])),
              ("k.arr_str", ARRAY, (STRING, ["a", "", "ccc"])), ("k.big", U64, 2 ** 63 + 1)]
    t1 = tensor("f32", [4, 2])
    t2 = tensor("q4_K", [256, 1])
    open(os.path.join(out, "align64.gguf"), "wb").write(
        gguf(kv_all, [("a", [4, 2], 0, t1[0]), ("b", [256, 1], 12, t2[0])], align=64))

    # a type qscope cannot decode: opens, but decoding names it
    open(os.path.join(out, "iq.gguf"), "wb").write(
        gguf([], [("iq", [256, 1], GGML["iq2_xxs"][0], b"\0" * 66)]))

    # malformed files: one tensor "w" (f32 [4, 2]) unless said otherwise
    good_t = [("w", [4, 2], 0, np.arange(8, dtype=F32).tobytes())]
    base = gguf([("general.architecture", STRING, "test")], good_t)
    info_off = len(b"GGUF") + 4 + 16 + len(gstr("general.architecture")) + 4 + len(gstr("test"))
    # offsets inside the tensor info of "w"
    t_ndim = info_off + len(gstr("w"))
    t_dims = t_ndim + 4
    t_type = t_dims + 16
    t_off = t_type + 4
    bad = {}

    def put(name, data, words):
        open(os.path.join(out, "bad", name + ".gguf"), "wb").write(data)
        bad[name] = words

    def patch(b, at, fmt, v):
        b = bytearray(b)
        struct.pack_into(fmt, b, at, v)
        return bytes(b)

    put("empty", b"", "not a GGUF file")
    put("magic", b"GGML" + base[4:], "not a GGUF file")
    put("version1", patch(base, 4, "<I", 1), "version 1")
    put("truncated-header", base[:10], "truncated")
    put("truncated-kv", base[:info_off - 3], "truncated")
    put("truncated-data", base[:-4], "past the end")
    put("lying-tensor-count", patch(base, 8, "<Q", 1 << 40), "claims")
    put("lying-kv-count", patch(base, 16, "<Q", 1 << 40), "claims")
    put("key-length", patch(base, 24, "<Q", 1 << 50), "past the end")
    put("kv-type", patch(base, 24 + len(gstr("general.architecture")), "<I", 13),
        "unknown value type")
    put("ndim", patch(base, t_ndim, "<I", 5), "dimensions")
    put("dim-zero", patch(base, t_dims, "<Q", 0), "must be >= 1")
    put("dim-overflow", patch(patch(base, t_dims, "<Q", 1 << 62), t_dims + 8, "<Q", 1 << 62),
        "overflow")
    put("type-unknown", patch(base, t_type, "<I", 77), "unknown ggml type 77")
    put("type-removed", patch(base, t_type, "<I", 4), "unknown ggml type 4")
    put("offset-range", patch(base, t_off, "<Q", 1 << 20), "past the end")
    put("offset-unaligned", patch(base, t_off, "<Q", 4), "not a multiple of the alignment")
    put("block-multiple", gguf([], [("w", [40, 1], 8, b"\0" * 68)]), "not a multiple")
    two = gguf([], [("a", [8], 0, b"\0" * 32), ("b", [8], 0, b"\0" * 32)])
    # point b at a's bytes (+0): overlap; b's offset field is the last 8 bytes of its info
    b_off = two.index(gstr("b")) + len(gstr("b")) + 4 + 8 + 4
    put("overlap", patch(two, b_off, "<Q", 0), "overlap")
    put("dup-tensor", gguf([], [("a", [8], 0, b"\0" * 32), ("a", [8], 0, b"\0" * 32)]),
        "duplicate tensor name")
    put("dup-key", gguf([("k", U8, 1), ("k", U8, 2)], []), "duplicate key")
    put("align-bad", gguf([("general.alignment", U32, 48)], good_t), "not a power of two")
    put("align-type", gguf([("general.alignment", U64, 32)], good_t), "not a u32")
    put("bool", gguf([("k", BOOL, 2)], []), "neither 0 nor 1")
    put("nested-array", gguf([("k", ARRAY, (ARRAY, []))], []), "arrays of arrays")
    put("array-length", patch(gguf([("k", ARRAY, (I32, [1]))], []), 24 + len(gstr("k")) + 4 + 4,
                              "<Q", 1 << 40), "does not fit")
    put("name-long", gguf([], [("n" * 64, [8], 0, b"\0" * 32)]), "must be 1..63")
    json.dump(bad, open(os.path.join(out, "bad.json"), "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
