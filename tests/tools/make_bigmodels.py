#!/usr/bin/python3
"""make_bigmodels.py BIG - real-size fixtures for `make bench`, never committed: Hugging Face
folders with random weights N(0, 0.02) (norm gains 1, biases 0) in the exact shapes of
  BIG/gpt2-small       GPT-2-small: 124M parameters, vocab 50257, ctx 1024, d 768, 12 blocks,
                       12 heads, tied head, F32 on disk (as openai-community/gpt2 ships it)
  BIG/tinyllama-1.1b   TinyLlama-1.1B: 22 blocks, d 2048, ffn 5632, 32 heads, 4 KV heads,
                       vocab 32000, ctx 2048, untied head, BF16 on disk
and, beside each, NAME-tokens.bin: 65536 random token ids (uint16, nanoGPT layout, seeded).
Idempotent: a folder whose model.safetensors exists is kept; files are written under a
temporary name and renamed when complete. Only numpy (Debian's python3-numpy); tensors are
generated and written one at a time, so memory stays near the largest tensor."""
import json
import os
import struct
import sys

import numpy as np

NTOK = 65536


def gpt2_small():
    d, L, V, C, ff = 768, 12, 50257, 1024, 3072
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V,
           "n_embd": d, "n_layer": L, "n_head": 12, "n_positions": C, "n_ctx": C,
           "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
           "tie_word_embeddings": True, "torch_dtype": "float32"}
    t = [("wte.weight", (V, d), "n"), ("wpe.weight", (C, d), "n")]
    for i in range(L):
        h = f"h.{i}."
        t += [(h + "ln_1.weight", (d,), "1"), (h + "ln_1.bias", (d,), "0"),
              (h + "attn.c_attn.weight", (d, 3 * d), "n"), (h + "attn.c_attn.bias", (3 * d,), "0"),
              (h + "attn.c_proj.weight", (d, d), "n"), (h + "attn.c_proj.bias", (d,), "0"),
              (h + "ln_2.weight", (d,), "1"), (h + "ln_2.bias", (d,), "0"),
              (h + "mlp.c_fc.weight", (d, ff), "n"), (h + "mlp.c_fc.bias", (ff,), "0"),
              (h + "mlp.c_proj.weight", (ff, d), "n"), (h + "mlp.c_proj.bias", (d,), "0")]
    t += [("ln_f.weight", (d,), "1"), ("ln_f.bias", (d,), "0")]
    return cfg, t, "F32", V


def tinyllama():
    d, L, V, ff, H, Hk = 2048, 22, 32000, 5632, 32, 4
    kv = d // H * Hk
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": V,
           "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": Hk, "hidden_act": "silu",
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    t = [("model.embed_tokens.weight", (V, d), "n")]
    for i in range(L):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (d,), "1"),
              (p + "self_attn.q_proj.weight", (d, d), "n"),
              (p + "self_attn.k_proj.weight", (kv, d), "n"),
              (p + "self_attn.v_proj.weight", (kv, d), "n"),
              (p + "self_attn.o_proj.weight", (d, d), "n"),
              (p + "post_attention_layernorm.weight", (d,), "1"),
              (p + "mlp.gate_proj.weight", (ff, d), "n"),
              (p + "mlp.up_proj.weight", (ff, d), "n"),
              (p + "mlp.down_proj.weight", (d, ff), "n")]
    t += [("model.norm.weight", (d,), "1"), ("lm_head.weight", (V, d), "n")]
    return cfg, t, "BF16", V


def bf16(x):
    """float32 -> bfloat16 bits, round to nearest even."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def write(folder, cfg, tensors, dtype, seed):
    st = os.path.join(folder, "model.safetensors")
    if os.path.exists(st):
        print(f"{folder}: present, kept")
        return
    os.makedirs(folder, exist_ok=True)
    es = 4 if dtype == "F32" else 2
    header, off = {"__metadata__": {"format": "pt", "qscope": "random N(0,0.02), make bigmodels"}}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * es
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    rng = np.random.default_rng(seed)
    tmp = st + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape, kind in tensors:
            n = int(np.prod(shape))
            for s in range(0, n, 1 << 24):  # 16M values at a time
                m = min(n - s, 1 << 24)
                if kind == "n":
                    x = rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)
                else:
                    x = np.full(m, 1.0 if kind == "1" else 0.0, dtype=np.float32)
                f.write(x.astype("<f4").tobytes() if dtype == "F32" else bf16(x).tobytes())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, st)
    nparam = sum(int(np.prod(s)) for _, s, _ in tensors)
    print(f"{folder}: {nparam} parameters, {dtype}, {os.path.getsize(st)} bytes")


def tokens(path, vocab, seed):
    if os.path.exists(path):
        return
    ids = np.random.default_rng(seed).integers(0, vocab, NTOK).astype("<u2")
    ids.tofile(path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"{path}: {NTOK} tokens")


def main():
    big = sys.argv[1]
    for name, fn, seed in (("gpt2-small", gpt2_small, 1), ("tinyllama-1.1b", tinyllama, 2)):
        cfg, t, dtype, vocab = fn()
        write(os.path.join(big, name), cfg, t, dtype, seed)
        tokens(os.path.join(big, name + "-tokens.bin"), vocab, seed + 100)


if __name__ == "__main__":
    main()
