#!/usr/bin/python3
"""gguf_tensors.py - the tensors of a GGUF file, read here from the GGUF specification
(independent of qscope): one line a tensor, "NAME TYPE DIMS SHA256-OF-ITS-BYTES", in file order.

    /usr/bin/python3 tests/tools/gguf_tensors.py FILE.gguf
"""
import hashlib
import struct
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_gguf import GGML  # noqa: E402  name -> (type number, block elements, block bytes)

SIZES = {8: 1, 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def main(path):
    b = open(path, "rb").read()
    assert b[:4] == b"GGUF", "not a GGUF file"
    ver, nt, nkv = struct.unpack_from("<IQQ", b, 4)
    off = 24

    def rstr(o):
        n = struct.unpack_from("<Q", b, o)[0]
        return b[o + 8:o + 8 + n].decode(), o + 8 + n

    def skip(t, o):
        if t == 8:
            return rstr(o)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, o)
            o += 12
            for _ in range(n):
                o = skip(et, o)
            return o
        return o + SIZES[t]

    align = 32
    for _ in range(nkv):
        k, off = rstr(off)
        t = struct.unpack_from("<I", b, off)[0]
        if k == "general.alignment":
            align = struct.unpack_from("<I", b, off + 4)[0]
        off = skip(t, off + 4)
    infos = []
    for _ in range(nt):
        name, off = rstr(off)
        nd = struct.unpack_from("<I", b, off)[0]
        ne = struct.unpack_from("<%dQ" % nd, b, off + 4)
        typ, toff = struct.unpack_from("<IQ", b, off + 4 + 8 * nd)
        off += 4 + 8 * nd + 12
        infos.append((name, typ, ne, toff))
    data = (off + align - 1) // align * align
    names = {v[0]: k for k, v in GGML.items()}
    for name, typ, ne, toff in infos:
        _, blk, bb = GGML[names[typ]]
        n = 1
        for x in ne:
            n *= x
        nbytes = n // blk * bb
        h = hashlib.sha256(b[data + toff:data + toff + nbytes]).hexdigest()
        print(name, names[typ], "x".join(map(str, ne)), h)


if __name__ == "__main__":
    main(sys.argv[1])
