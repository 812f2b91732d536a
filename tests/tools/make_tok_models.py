#!/usr/bin/python3
"""make_tok_models.py - tiny models for tests/sh/tokenizer.sh: a LLaMA with a vocabulary over
65535 (as LLaMA-3's 128k, Qwen2's 152k) with uint32 token files, and a GPT-2 with GPT-2's
vocabulary size for tokenizer.json.
  make_tok_models.py make DIR       DIR/model/{config.json,model.safetensors} (vocab 70000, d 16,
                                  1 block, F32, seed 5), DIR/tok.u32 (raw uint32 ids) and
                                  DIR/tok_llmc.bin (the same ids behind llm.c's LLaMA-3 header:
                                  magic 20240801, version 7)
  make_tok_models.py loss DIR OFF  the float64 PyTorch mean next-token loss over the
                                  non-overlapping ctx windows of ids[OFF:], as qscope's eval
                                  takes them; printed with 10 digits
  make_tok_models.py gpt2 DIR     DIR/{config.json,model.safetensors}: GPT-2, vocab 50257, d 8,
                                  1 block, ctx 32 (a tokenizer.json is put beside it by the test)
Reference forward: datasets/tools/train_tiny_lm.py (plain torch, mirrors LlamaForCausalLM)."""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402

CFG = {"model_type": "llama", "vocab_size": 70000, "hidden_size": 16, "num_hidden_layers": 1,
       "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24,
       "hidden_act": "silu", "max_position_embeddings": 16, "rms_norm_eps": 1e-6,
       "rope_theta": 10000.0, "tie_word_embeddings": False}
N = 600


def params():
    return ref.llama_params(CFG, torch.Generator().manual_seed(5), std=0.3)


def ids():
    rng = np.random.default_rng(6)
    t = rng.integers(0, CFG["vocab_size"], N, dtype=np.uint32)
    t[::7] = 69999  # the top of the vocabulary, far above uint16
    return t


def main():
    mode, d = sys.argv[1], sys.argv[2]
    if mode == "make":
        ref.write_model(os.path.join(d, "model"), CFG, params())
        t = ids()
        t.astype("<u4").tofile(os.path.join(d, "tok.u32"))
        h = np.zeros(256, dtype="<i4")
        h[0], h[1], h[2] = 20240801, 7, len(t)
        with open(os.path.join(d, "tok_llmc.bin"), "wb") as f:
            f.write(h.tobytes())
            f.write(t.astype("<u4").tobytes())
    elif mode == "gpt2":
        g = {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 8, "n_layer": 1, "n_head": 2,
             "n_positions": 32, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
        ref.write_model(d, g, ref.gpt2_params(g, torch.Generator().manual_seed(7), std=0.3))
    else:
        off = int(sys.argv[3])
        v = ids()[off:].astype(np.int64)
        loss, _ = ref.val_loss(ref.llama_forward, params(), CFG, v, CFG["max_position_embeddings"])
        print(f"{loss:.10f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
