#!/usr/bin/python3
"""torch_forward.py - PyTorch CPU reference for bench_forward: same MLPs, batches and threads.
Prints "forward NAME BATCH SAMPLES_PER_S"."""
import json
import struct
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)


def best(fn, reps):
    fn()
    t = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def bench(name, model, n, reps):
    x = torch.randn(n, model[0].in_features)
    with torch.inference_mode():
        t = best(lambda: model(x), reps)
    print("forward %s %d %.6g" % (name, n, n / t))


def seq(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


bench("mlp-784-512-512-10", seq([784, 512, 512, 10]), 8192, 5)
if len(sys.argv) > 2:  # the bundled model's shape, read from its safetensors header
    with open(sys.argv[2], "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    names = h["__metadata__"]["qscope.layers"].split(",")
    sizes = [h[names[0] + ".weight"]["shape"][1]] + [h[k + ".weight"]["shape"][0] for k in names]
    bench("digits-mlp", seq(sizes), 1797, 50)
