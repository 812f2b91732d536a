#!/usr/bin/python3
"""ctx_ref.py - the float64 PyTorch reference for `set ctx`: a model folder's mean next-token
loss over the held-out tokens (the last n // 10 of a nanoGPT uint16 .bin, as qscope splits them)
in non-overlapping windows of CTX tokens, which may be shorter than the model's context.
  ctx_ref.py DIR TOKENS.bin CTX      prints the loss (10 digits) and the tokens scored
F32 safetensors only (the bundled tiny models); forward: datasets/tools/train_tiny_lm.py."""
import json
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402


def load_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    p = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        t = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
        p[k[len("transformer."):] if k.startswith("transformer.") else k] = torch.from_numpy(t.copy())
    return p


def main():
    d, tok, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = json.load(open(os.path.join(d, "config.json")))
    p = load_st(os.path.join(d, "model.safetensors"))
    gpt2 = cfg["model_type"] == "gpt2"
    if not gpt2 and "lm_head.weight" not in p:
        p["lm_head.weight"] = p["model.embed_tokens.weight"]
    ids = np.fromfile(tok, dtype="<u2").astype(np.int64)
    val = ids[len(ids) - len(ids) // 10:]
    loss, n = ref.val_loss(ref.gpt2_forward if gpt2 else ref.llama_forward, p, cfg, val, ctx)
    print(f"{loss:.10f} {n}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
