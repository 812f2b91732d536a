#!/usr/bin/python3
"""make_gguf_llama.py - a llama.cpp GGUF file from a Hugging Face LLaMA folder, written here from
the GGUF specification the way llama.cpp's convert_hf_to_gguf.py lays a llama out (independent
of qscope and of gguf-py):

    /usr/bin/python3 tests/tools/make_gguf_llama.py HF_DIR OUT.gguf f32|f16|q8_0
    /usr/bin/python3 tests/tools/make_gguf_llama.py --random-hf OUT_DIR   (a random LLaMA folder,
                                                     widths multiples of 256, for k-quant tests)

- keys: general.architecture "llama", llama.context_length, llama.embedding_length,
  llama.block_count, llama.feed_forward_length, llama.rope.dimension_count,
  llama.attention.head_count, llama.attention.head_count_kv, llama.rope.freq_base,
  llama.attention.layer_norm_rms_epsilon (F32 values as the converter writes them);
- tensors with ggml names, dims fastest first (a (out, in) matrix is ne = [in, out]); q_proj
  and k_proj rows permuted for ggml's RoPE as the converter does (within each head, row
  i*hd/2 + j goes to 2j + i); no output.weight when the head is tied;
- f16: 2-D tensors F16, norms F32 (the converter's choice); q8_0: 2-D tensors as Q8_0 blocks
  (round half away from zero, d = amax / 127 in F16), norms F32, and F16 for a matrix whose
  rows are not a multiple of 32 (tiny-llama's ffn_down, 172 wide).
"""
import json
import struct
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_gguf import gguf, STRING, U32, F32T  # noqa: E402


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    dt = {"F32": np.float32, "F16": np.float16}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            u = np.frombuffer(raw[8 + n + a:8 + n + b], np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw[8 + n + a:8 + n + b], dt[v["dtype"]]).astype(np.float32)
        out[k] = arr.reshape(v["shape"])
    return out


def permute(w, n_head):
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q8_0(w):
    x = w.reshape(-1, 32).astype(np.float32)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    y = (x * inv[:, None]).astype(np.float32)
    t = np.trunc(y)  # roundf: half away from zero, without the float error of floor(|y| + 0.5)
    q = (t + np.sign(y) * (np.abs(y - t) >= np.float32(0.5))).astype(np.int8)
    out = b""
    for i in range(x.shape[0]):
        out += np.float16(d[i]).tobytes() + q[i].tobytes()
    return out


def main(src, dst, kind):
    cfg = json.load(open(src + "/config.json"))
    assert cfg["model_type"] == "llama"
    t = read_st(src + "/model.safetensors")
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hk = cfg.get("num_key_value_heads", H)
    tied = cfg.get("tie_word_embeddings", False)
    kvs = [("general.architecture", STRING, "llama"), ("general.name", STRING, "tiny-llama"),
           ("llama.context_length", U32, cfg["max_position_embeddings"]),
           ("llama.embedding_length", U32, d), ("llama.block_count", U32, cfg["num_hidden_layers"]),
           ("llama.feed_forward_length", U32, cfg["intermediate_size"]),
           ("llama.rope.dimension_count", U32, d // H), ("llama.attention.head_count", U32, H),
           ("llama.attention.head_count_kv", U32, Hk),
           ("llama.rope.freq_base", F32T, cfg.get("rope_theta", 10000.0)),
           ("llama.attention.layer_norm_rms_epsilon", F32T, cfg.get("rms_norm_eps", 1e-6))]
    tensors = []

    def put(name, w):
        ne = list(reversed(w.shape))
        if w.ndim == 1 or kind == "f32":
            tensors.append((name, ne, 0, w.astype(np.float32).tobytes()))
        elif kind == "f16" or w.shape[-1] % 32:  # q8_0 rows must hold whole blocks
            tensors.append((name, ne, 1, w.astype(np.float16).tobytes()))
        else:
            tensors.append((name, ne, 8, q8_0(w)))

    put("token_embd.weight", t["model.embed_tokens.weight"])
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        put("blk.%d.attn_norm.weight" % l, t[p + "input_layernorm.weight"])
        put("blk.%d.attn_q.weight" % l, permute(t[p + "self_attn.q_proj.weight"], H))
        put("blk.%d.attn_k.weight" % l, permute(t[p + "self_attn.k_proj.weight"], Hk))
        put("blk.%d.attn_v.weight" % l, t[p + "self_attn.v_proj.weight"])
        put("blk.%d.attn_output.weight" % l, t[p + "self_attn.o_proj.weight"])
        put("blk.%d.ffn_norm.weight" % l, t[p + "post_attention_layernorm.weight"])
        put("blk.%d.ffn_gate.weight" % l, t[p + "mlp.gate_proj.weight"])
        put("blk.%d.ffn_up.weight" % l, t[p + "mlp.up_proj.weight"])
        put("blk.%d.ffn_down.weight" % l, t[p + "mlp.down_proj.weight"])
    put("output_norm.weight", t["model.norm.weight"])
    if not tied:
        put("output.weight", t["lm_head.weight"])
    open(dst, "wb").write(gguf(kvs, tensors))


def random_hf(out, d=256, H=4, Hk=2, ff=512, L=1, vocab=256, ctx=32):
    """A random LLaMA folder (config.json + F32 model.safetensors) whose widths are multiples
    of 256, so that llama.cpp's k-quants apply without falling back."""
    import os
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": d, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": Hk, "intermediate_size": ff,
           "hidden_act": "silu", "max_position_embeddings": ctx, "rms_norm_eps": 1e-05,
           "rope_theta": 10000.0, "tie_word_embeddings": False}
    json.dump(cfg, open(out + "/config.json", "w"), indent=1)
    kv = Hk * (d // H)
    shapes = {"model.embed_tokens.weight": [vocab, d], "model.norm.weight": [d],
              "lm_head.weight": [vocab, d]}
    for l in range(L):
        p = "model.layers.%d." % l
        shapes.update({p + "input_layernorm.weight": [d], p + "post_attention_layernorm.weight": [d],
                       p + "self_attn.q_proj.weight": [d, d], p + "self_attn.k_proj.weight": [kv, d],
                       p + "self_attn.v_proj.weight": [kv, d], p + "self_attn.o_proj.weight": [d, d],
                       p + "mlp.gate_proj.weight": [ff, d], p + "mlp.up_proj.weight": [ff, d],
                       p + "mlp.down_proj.weight": [d, ff]})
    hdr, data = {}, b""
    for k, s in shapes.items():
        if len(s) == 1:
            v = (1 + 0.1 * rng.standard_normal(s)).astype(np.float32)
        else:
            v = (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32)
            v[0, :3] = [0.9, -1.1, 0.0]  # an outlier or two
        b = v.tobytes()
        hdr[k] = {"dtype": "F32", "shape": s, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    open(out + "/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)


if __name__ == "__main__":
    if sys.argv[1] == "--random-hf":
        random_hf(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3])
