#!/usr/bin/python3
"""torch_lm.py - PyTorch reference timing for bench_lm: the bundled tiny GPT-2 and LLaMA evaluated
over every held-out window of datasets/text/licenses.txt, one window (64 tokens) at a time as
qscope does, with the plain-torch forward functions of datasets/tools/train_tiny_lm.py (the ones
qscope's logits are checked against). Prints "lm NAME TOKENS_PER_S"."""
import json
import os
import struct
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)


def load(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    b = open(os.path.join(folder, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    p = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        p[k] = torch.frombuffer(bytearray(b[8 + n + s:8 + n + e]), dtype=torch.float32).reshape(v["shape"])
    return cfg, p


text = open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "rb").read()
val = torch.tensor(list(text[len(text) - len(text) // 10:]), dtype=torch.long)
for name, fwd in (("tiny-gpt2", ref.gpt2_forward), ("tiny-llama", ref.llama_forward)):
    cfg, p = load(os.path.join(ROOT, "datasets", "models", name))
    ctx = 64
    nw = (len(val) - 1) // ctx
    wins = [val[w * ctx:(w + 1) * ctx].unsqueeze(0) for w in range(nw)]
    with torch.inference_mode():
        fwd(p, cfg, wins[0])
        best = 1e30
        for _ in range(3):
            t0 = time.perf_counter()
            for x in wins:
                fwd(p, cfg, x)
            best = min(best, time.perf_counter() - t0)
    print("lm %s %.6g" % (name, nw * ctx / best))
