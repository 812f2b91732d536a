#!/usr/bin/python3
"""lm_shape.py - an untrained GPT-2 shaped folder (config.json and an all-zero F32
model.safetensors) for `qscope train init=scratch`, which takes its shape from the loaded model
and draws its own initial weights. Standard library only. Used by `make zoo`.

    /usr/bin/python3 datasets/tools/lm_shape.py DIR D_MODEL N_LAYER [CTX=128] [VOCAB=256]

n_head = D_MODEL / 32 (at least 1), n_inner = 4 D_MODEL, tied head, gelu_new."""
import json
import os
import struct
import sys


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    out, d, L = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    V = int(sys.argv[5]) if len(sys.argv) > 5 else 256
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V,
           "n_embd": d, "n_layer": L, "n_head": max(1, d // 32), "n_positions": ctx,
           "n_ctx": ctx, "n_inner": 4 * d, "activation_function": "gelu_new",
           "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    shapes = [("wte.weight", [V, d]), ("wpe.weight", [ctx, d])]
    for i in range(L):
        h = f"h.{i}."
        shapes += [(h + "ln_1.weight", [d]), (h + "ln_1.bias", [d]),
                   (h + "attn.c_attn.weight", [d, 3 * d]), (h + "attn.c_attn.bias", [3 * d]),
                   (h + "attn.c_proj.weight", [d, d]), (h + "attn.c_proj.bias", [d]),
                   (h + "ln_2.weight", [d]), (h + "ln_2.bias", [d]),
                   (h + "mlp.c_fc.weight", [d, 4 * d]), (h + "mlp.c_fc.bias", [4 * d]),
                   (h + "mlp.c_proj.weight", [4 * d, d]), (h + "mlp.c_proj.bias", [d])]
    shapes += [("ln_f.weight", [d]), ("ln_f.bias", [d])]
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shp in shapes:
        n = 4
        for s in shp:
            n *= s
        hdr["transformer." + name] = {"dtype": "F32", "shape": shp, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + off)


if __name__ == "__main__":
    main()
