#!/usr/bin/python3
"""make_lm_fixtures.py - tiny random GPT-2 and LLaMA models in Hugging Face layout and their
reference logits, for checking qscope's transformer forward pass (tests/unit/test_lm.c).

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_lm_fixtures.py

The reference forward passes are the plain-torch ones in datasets/tools/train_tiny_lm.py (they
mirror transformers' GPT2LMHeadModel / LlamaForCausalLM math; transformers is not in Debian),
run here in float64 on the weights exactly as stored (BF16/F16 weights rounded first).

Writes tests/fixtures/lm_<name>/{config.json, model.safetensors, ref.safetensors} for
  gpt2          vocab 50, d 32, 2 layers, 4 heads, ctx 16, n_inner 48, F32, tied head
  gpt2_prefix   the same weights under "transformer." names (as GPT2LMHeadModel saves them)
  llama_gqa     vocab 40, d 32, 2 layers, 4 heads / 2 kv heads, ff 40, ctx 16, tied head, F16
  llama_untied  vocab 40, d 32, 2 layers, 4 heads / 4 kv heads, ff 56, ctx 16, untied, BF16,
                rope_theta 500
ref.safetensors: "logits" (T, vocab) F32 for T = ctx tokens, whose ids are the __metadata__
value "tokens" (comma-separated).
Weights are random normal with std 0.3 (norm gains 1 + N(0, 0.3^2)) so the logits are far from
uniform.
"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "datasets", "tools"))
import train_tiny_lm as ref  # noqa: E402


def stored(t, dtype):
    """The tensor as qscope will read it back from a file of this dtype, in float64."""
    if dtype == "F16":
        return t.half().double()
    if dtype == "BF16":
        u = t.float().numpy().view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return torch.from_numpy(u.astype(np.uint32).view(np.float32).copy()).double()
    return t.double()


def make(name, cfg, params_fn, fwd, dtype, seed, prefix=""):
    gen = torch.Generator().manual_seed(seed)
    p = params_fn(cfg, gen, std=0.3)
    folder = os.path.join(ROOT, "tests", "fixtures", "lm_" + name)
    ref.write_model(folder, cfg, p, {"fixture": name}, dtype, prefix)
    p64 = {k: stored(v, dtype) for k, v in p.items()}
    ctx = cfg.get("n_positions") or cfg["max_position_embeddings"]
    tok = torch.randint(0, cfg["vocab_size"], (1, ctx), generator=gen)
    with torch.no_grad():
        logits = fwd(p64, cfg, tok)[0]
    ref.write_st(os.path.join(folder, "ref.safetensors"),
                 [("logits", logits.float())], {"tokens": ",".join(str(int(t)) for t in tok[0])})
    print(f"{name}: logits max |.| {logits.abs().max():.3f} std {logits.std():.3f}")


def main():
    torch.set_num_threads(1)
    g = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 2, "n_head": 4,
         "n_positions": 16, "n_inner": 48, "activation_function": "gelu_new",
         "layer_norm_epsilon": 1e-5}
    make("gpt2", g, ref.gpt2_params, ref.gpt2_forward, "F32", 11)
    make("gpt2_prefix", g, ref.gpt2_params, ref.gpt2_forward, "F32", 11, "transformer.")
    la = {"model_type": "llama", "vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 40,
          "hidden_act": "silu", "max_position_embeddings": 16, "rms_norm_eps": 1e-6,
          "rope_theta": 10000.0, "tie_word_embeddings": True}
    make("llama_gqa", la, ref.llama_params, ref.llama_forward, "F16", 12)
    lb = dict(la, num_key_value_heads=4, intermediate_size=56, rope_theta=500.0,
              tie_word_embeddings=False)
    make("llama_untied", lb, ref.llama_params, ref.llama_forward, "BF16", 13)


if __name__ == "__main__":
    main()
