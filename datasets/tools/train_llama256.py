#!/usr/bin/python3
"""train_llama256.py - the bundled llama256: a one-block byte-level LLaMA whose every input width
is 256 (d_model 256, intermediate 256), so that llama.cpp's k-quants (256-element super-blocks)
apply to every linear without a fallback. Trained like tiny-llama by train_tiny_lm.py's loop
(same corpus, split, optimiser, schedule and validation metric), stored in F16.

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 datasets/tools/train_llama256.py

Writes datasets/models/llama256/ (config.json + model.safetensors, every tensor F16). The
recorded qscope.val_loss / qscope.val_ppl are those of the F16 weights (float64 evaluation).
The llama.cpp files beside it (llama256-f16.gguf, llama256-q4km.gguf) are made from this folder
by datasets/tools/make_llama256_gguf.sh.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny_lm as t  # noqa: E402

CFG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256,
       "hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 8,
       "num_key_value_heads": 2, "intermediate_size": 256, "hidden_act": "silu",
       "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
       "tie_word_embeddings": True}

_write = t.write_model


def write_f16(folder, cfg, p, meta=None, dtype="F32", prefix=""):
    """The trained weights rounded to F16; the recorded metric re-evaluated on them."""
    p16 = {k: v.half().float() for k, v in p.items()}
    text = open(os.path.join(t.ROOT, "datasets", "text", "licenses.txt"), "rb").read()
    data = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    vl, ntok = t.val_loss(t.llama_forward, p16, cfg, data[len(data) - len(data) // 10:], 64)
    meta = dict(meta)
    meta["qscope.train"] = meta["qscope.train"].replace("train_tiny_lm.py",
                                                        "train_llama256.py") + ", stored F16"
    meta["qscope.val_loss"] = f"{vl:.6f}"
    meta["qscope.val_ppl"] = f"{math.exp(vl):.6f}"
    print(f"F16: val loss {vl:.4f} ppl {math.exp(vl):.4f}", file=sys.stderr)
    _write(folder, cfg, p16, meta, dtype="F16", prefix=prefix)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t.write_model = write_f16
    text = open(os.path.join(t.ROOT, "datasets", "text", "licenses.txt"), "rb").read()
    data = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    steps = int(os.environ.get("TINY_LM_STEPS", "1200"))
    t.train("llama256", t.llama_forward, t.llama_params, CFG, data, steps, 3e-3, 32, 3, 0.2, 0.1)


if __name__ == "__main__":
    main()
