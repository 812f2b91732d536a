#!/usr/bin/python3
"""torch_big.py THREADS DIR CTX - PyTorch reference for bench_big.sh: the plain-torch forward of
datasets/tools/train_tiny_lm.py (the one qscope's logits are checked against) over one window of
CTX tokens of DIR-tokens.bin, on DIR's weights (BF16 widened to float32, as qscope computes).
Prints "big load SECONDS", "big window SECONDS" (best of 2), "big cpu SECONDS" (the process CPU
time of the cheaper of the 2 forwards: at one thread it hardly moves with the machine's load) and
"big rss MB" (peak)."""
import json
import os
import resource
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
d, ctx = sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
cfg = json.load(open(os.path.join(d, "config.json")))
st = os.path.join(d, "model.safetensors")
raw = np.memmap(st, dtype=np.uint8, mode="r")
n = int(np.frombuffer(raw[:8].tobytes(), "<u8")[0])
h = json.loads(raw[8:8 + n].tobytes())
p = {}
for k, v in h.items():
    if k == "__metadata__":
        continue
    s, e = v["data_offsets"]
    b = raw[8 + n + s:8 + n + e]
    if v["dtype"] == "BF16":
        x = (b.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        x = np.array(b.view("<f4"))
    p[k] = torch.from_numpy(x.reshape(v["shape"]))
load = time.perf_counter() - t0
tok = np.fromfile(d.rstrip("/") + "-tokens.bin", dtype="<u2")[:ctx].astype(np.int64)
x = torch.from_numpy(tok).unsqueeze(0)
fwd = ref.gpt2_forward if cfg["model_type"] == "gpt2" else ref.llama_forward
best = bestc = 1e30
with torch.inference_mode():
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        fwd(p, cfg, x)
        best = min(best, time.perf_counter() - t0)
        bestc = min(bestc, time.process_time() - c0)
print("big load %.3f" % load)
print("big window %.3f" % best)
print("big cpu %.3f" % bestc)
print("big rss %.0f" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
