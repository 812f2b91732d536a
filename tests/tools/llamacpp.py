#!/usr/bin/python3
"""llamacpp.py - llama.cpp itself (the npm package's libggml-base.so / libllama.so, through
ctypes) as an independent reference for qscope's GGUF tests.

    llamacpp.py LIBDIR accepts FILE...       gguf_init_from_file on each: prints
                                             "PASS gguf.llamacpp-accepts.NAME" or FAIL
    llamacpp.py LIBDIR quantize IN OUT FTYPE llama_model_quantize (FTYPE a llama_ftype number,
                                             e.g. 15 = Q4_K_M) without an importance matrix;
                                             exit 0 on success
"""
import ctypes
import os
import sys


def load(libdir):
    ctypes.CDLL(os.path.join(libdir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    for n in sorted(os.listdir(libdir)):
        if n.startswith("libggml.") and n.endswith(".so"):
            ctypes.CDLL(os.path.join(libdir, n), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))


class InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


class QuantParams(ctypes.Structure):  # larger than llama_model_quantize_params: returned via sret
    _fields_ = [("raw", ctypes.c_ubyte * 1024)]


def accepts(libdir, files):
    g = load(libdir)
    g.gguf_init_from_file.restype = ctypes.c_void_p
    g.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    g.gguf_free.argtypes = [ctypes.c_void_p]
    bad = 0
    for f in files:
        h = g.gguf_init_from_file(f.encode(), InitParams(True, None))
        print("%s gguf.llamacpp-accepts.%s" % ("PASS" if h else "FAIL", os.path.basename(f)))
        bad += not h
        if h:
            g.gguf_free(h)
    return 1 if bad else 0


def quantize(libdir, src, dst, ftype):
    load(libdir)
    lib = [n for n in sorted(os.listdir(libdir)) if n.startswith("libllama.") and n.endswith(".so")]
    L = ctypes.CDLL(os.path.join(libdir, lib[0]), mode=ctypes.RTLD_GLOBAL)
    L.llama_model_quantize_default_params.restype = QuantParams
    L.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantParams)]
    L.llama_model_quantize.restype = ctypes.c_uint32
    L.llama_backend_init()
    p = L.llama_model_quantize_default_params()
    ft = ctypes.c_int32.from_buffer(p.raw, 4)  # after int32 nthread
    if ft.value != 7:  # LLAMA_FTYPE_MOSTLY_Q8_0, the documented default: the layout is as assumed
        print("llamacpp.py: unexpected llama_model_quantize_params layout", file=sys.stderr)
        return 2
    ft.value = int(ftype)
    return 1 if L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) else 0


if __name__ == "__main__":
    if sys.argv[2] == "accepts":
        sys.exit(accepts(sys.argv[1], sys.argv[3:]))
    sys.exit(quantize(sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5]))
