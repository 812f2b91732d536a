#!/usr/bin/python3
"""make_torch_mlp.py - a PyTorch-trained nn.Sequential MLP and its reference outputs, so that
qscope's state-dict inference and forward pass are checked against PyTorch itself.

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_torch_mlp.py

Writes
  tests/fixtures/torch_mlp.safetensors  state dict of nn.Sequential(Linear(64,32), GELU,
                                        Linear(32,16), GELU, Linear(16,10)) trained 30 epochs
                                        with Adam on datasets/digits.csv (seed 0); no metadata,
                                        so qscope must infer the layers (act=gelu on load)
  tests/fixtures/torch_mlp.json         PyTorch's argmax predictions for all 1797 samples, its
                                        mean cross-entropy and accuracy over them, and the logits
                                        of the first 5 samples
The safetensors container is written here from the format's definition (the Python
`safetensors` package is not in Debian 12).
"""
import json
import os
import struct

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_st(path, named):
    header, off, blobs = {}, 0, []
    for name, t in named:
        b = t.detach().contiguous().float().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = np.loadtxt(os.path.join(ROOT, "datasets/digits.csv"), delimiter=",", skiprows=1)
    x = torch.tensor(data[:, :64], dtype=torch.float32)
    y = torch.tensor(data[:, 64], dtype=torch.int64)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 16),
                                torch.nn.GELU(), torch.nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        pred = logits.argmax(1)
        acc = (pred == y).float().mean().item()
    write_st(os.path.join(ROOT, "tests/fixtures/torch_mlp.safetensors"), list(model.state_dict().items()))
    with open(os.path.join(ROOT, "tests/fixtures/torch_mlp.json"), "w") as f:
        json.dump({"source": "tests/tools/make_torch_mlp.py, torch " + torch.__version__,
                   "act": "gelu", "loss": loss, "acc": acc, "pred": pred.tolist(),
                   "logits_first5": logits[:5].tolist()}, f)
    print("torch_mlp: loss %.6f acc %.4f" % (loss, acc))


if __name__ == "__main__":
    main()
