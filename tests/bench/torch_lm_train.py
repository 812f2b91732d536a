#!/usr/bin/python3
"""torch_lm_train.py - PyTorch reference timing for bench_lm_train: training steps of the bundled
tiny GPT-2's shape from scratch (the plain-torch forward and initialisation of
datasets/tools/train_tiny_lm.py, the trainer of the bundled models: AdamW betas 0.9/0.95,
weight decay 0.1, gradient clipping at 1, no dropout), BATCH windows of 64 byte tokens of
datasets/text/licenses.txt per step, float32. Prints "lmtrain NAME BATCH TOKENS_PER_S" (the
best of 3 runs of STEPS steps after 3 warm-up steps)."""
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16
STEPS, CTX = 20, 64
torch.set_num_threads(threads)
text = open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "rb").read()
data = torch.tensor(list(text[:len(text) - len(text) // 10]), dtype=torch.long)
gen = torch.Generator().manual_seed(1)
p = ref.gpt2_params(ref.GPT2_CFG, gen)
for v in p.values():
    v.requires_grad_(True)
params = list(p.values())
opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def step():
    ix = torch.randint(0, len(data) - CTX - 1, (batch,), generator=gen)
    x = torch.stack([data[i:i + CTX] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + CTX] for i in ix])
    logits = ref.gpt2_forward(p, ref.GPT2_CFG, x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


for _ in range(3):
    step()
best = 1e30
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(STEPS):
        step()
    best = min(best, time.perf_counter() - t0)
print("lmtrain tiny-gpt2 %d %.6g" % (batch, STEPS * batch * CTX / best))
