#!/usr/bin/python3
"""make_lm_variants.py - tiny random models of the LLaMA family's variants in Hugging Face layout,
with PyTorch's logits and autograd gradients as references for qscope's forward and backward
(src/model/lm.c, src/model/lm_grad.c; tests/unit/test_lm_variants.c).

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_lm_variants.py

Writes tests/fixtures/lm_<name>/{config.json, model.safetensors (F32), ref.safetensors} for
  qwen2       model_type qwen2: q/k/v biases (no o_proj or MLP bias), tied head, rope_theta 1e6,
              use_sliding_window false with sliding_window 4 and max_window_layers 1 (so no window
              applies: Qwen2 windows only with use_sliding_window true)
  mistral_sw  model_type mistral: sliding_window 5 < context 16 (query i sees keys j with
              i - 5 < j <= i, Hugging Face's sliding_window_overlay), GQA, untied
  llama_bias  model_type llama with attention_bias and mlp_bias true (q/k/v/o and gate/up/down
              biases), GQA, untied
each vocab 32, hidden 16, 2 layers, 4 heads (2 kv heads), ff 24, context 16; weights and biases
N(0, 0.3^2), norm gains 1 + N(0, 0.3^2). ref.safetensors: "logits" (ctx, vocab) F32 of the
__metadata__ "tokens" (comma-separated ids), as tests/tools/make_lm_fixtures.py writes them.

And tests/fixtures/lm_variants.json: per model, B = 3 windows of T = 16 tokens (T + 1 ids each:
inputs and shifted targets), the mean next-token cross-entropy and, per parameter tensor
(Hugging Face names, site weights (out, in)), its gradient's norm, its dot products with the
sign vectors s_1, s_2 of make_grad_fixture.py (splitmix64) and 8 sampled entries (the 4 largest
|g| and 4 random ones with |g| >= rms), as tests/fixtures/lm_grad.json holds them.

The reference forward is written here in plain torch (transformers is not in Debian): RMSNorm,
RoPE in rotate_half convention, grouped-query attention by repeating key/value heads, a causal
mask (and the sliding window), SwiGLU, F.linear with the biases; float64 throughout.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
SEED = 20261212
BASE = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 24, "hidden_act": "silu",
        "max_position_embeddings": 16, "rms_norm_eps": 1e-6}
MODELS = [
    ("qwen2", dict(BASE, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                   rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                   sliding_window=4, max_window_layers=1)),
    ("mistral_sw", dict(BASE, model_type="mistral", architectures=["MistralForCausalLM"],
                        rope_theta=10000.0, tie_word_embeddings=False, sliding_window=5)),
    ("llama_bias", dict(BASE, model_type="llama", architectures=["LlamaForCausalLM"],
                        rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True,
                        mlp_bias=True)),
]
SITES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def bias_sites(cfg):
    """Which of SITES carry a bias, as Hugging Face's modeling code builds them."""
    if cfg["model_type"] == "qwen2":
        return set(SITES[:3])
    if cfg["model_type"] == "llama":
        return set(SITES[:4] * cfg.get("attention_bias", False) +
                   SITES[4:] * cfg.get("mlp_bias", False))
    return set()


def window(cfg):
    """The sliding window that applies to every layer, or None."""
    if cfg["model_type"] == "mistral":
        return cfg.get("sliding_window", 4096)
    return None  # qwen2 here has use_sliding_window false; llama has none


def params(cfg, gen):
    """Parameters in qscope's gradient order: embedding, per layer its norms and sites (weight
    then bias), the final norm, an untied head."""
    d, ff, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (d // cfg["num_attention_heads"])
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    shape = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
             "self_attn.o_proj": (d, d), "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d),
             "mlp.down_proj": (d, ff)}
    bs = bias_sites(cfg)
    p = {"model.embed_tokens.weight": r(V, d)}
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        for j, s in enumerate(SITES):
            if j == 0:
                p[h + "input_layernorm.weight"] = 1 + r(d)
            if j == 4:
                p[h + "post_attention_layernorm.weight"] = 1 + r(d)
            p[h + s + ".weight"] = r(*shape[s])
            if s in bs:
                p[h + s + ".bias"] = r(shape[s][0])
    p["model.norm.weight"] = 1 + r(d)
    if not cfg["tie_word_embeddings"]:
        p["lm_head.weight"] = r(V, d)
    # the values qscope reads: F32
    return {k: v.float().double() for k, v in p.items()}


def forward(cfg, p, idx):
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hk = cfg["num_key_value_heads"]
    hd, eps, theta = d // H, cfg["rms_norm_eps"], cfg["rope_theta"]
    B, T = idx.shape
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = lambda t: torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1)  # noqa: E731
    rope = lambda t: t * cos + rot(t) * sin  # noqa: E731
    qi = torch.arange(T)[:, None]
    kj = torch.arange(T)[None, :]
    mask = kj <= qi
    if window(cfg):
        mask = mask & (kj > qi - window(cfg))
    lin = lambda x, s: F.linear(x, p[s + ".weight"], p.get(s + ".bias"))  # noqa: E731
    x = p["model.embed_tokens.weight"][idx]
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        a = rms(x, p[h + "input_layernorm.weight"])
        q = lin(a, h + "self_attn.q_proj").view(B, T, H, hd).transpose(1, 2)
        k = lin(a, h + "self_attn.k_proj").view(B, T, Hk, hd).transpose(1, 2)
        v = lin(a, h + "self_attn.v_proj").view(B, T, Hk, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + lin(a, h + "self_attn.o_proj")
        m = rms(x, p[h + "post_attention_layernorm.weight"])
        m = F.silu(lin(m, h + "mlp.gate_proj")) * lin(m, h + "mlp.up_proj")
        x = x + lin(m, h + "mlp.down_proj")
    x = rms(x, p["model.norm.weight"])
    return F.linear(x, p.get("lm_head.weight", p["model.embed_tokens.weight"]))


def write_st(path, named, meta):
    hdr, off, blobs = {}, 0, []
    for name, t in named:
        b = t.detach().float().contiguous().numpy().astype("<f4").tobytes()
        hdr[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hdr["__metadata__"] = meta
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def signs(k, n):
    """s_k[i] for i < n: splitmix64(k * 2^32 + i), +1 when its top bit is 0."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(k << 32)) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.where(z >> np.uint64(63), -1.0, 1.0)


def stats(g, rng):
    g = g.reshape(-1)
    rms = float(np.sqrt(np.mean(g * g)))
    top = [int(i) for i in np.argsort(-np.abs(g))[:4]]
    pool = [int(i) for i in np.nonzero(np.abs(g) >= rms)[0] if int(i) not in top]
    pick = top + sorted(int(i) for i in rng.choice(pool, min(4, len(pool)), replace=False))
    return {"norm": float(np.linalg.norm(g)),
            "proj": [float(np.dot(g, signs(k, g.size))) for k in (1, 2)],
            "idx": pick, "val": [float(g[i]) for i in pick]}


def make(name, cfg, gen, rng):
    folder = os.path.join(FIX, "lm_" + name)
    os.makedirs(folder, exist_ok=True)
    p = params(cfg, gen)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_st(os.path.join(folder, "model.safetensors"), list(p.items()),
             {"format": "pt", "fixture": name})
    ctx, V = cfg["max_position_embeddings"], cfg["vocab_size"]
    tok = torch.randint(0, V, (1, ctx), generator=gen)
    with torch.no_grad():
        logits = forward(cfg, p, tok)[0]
    write_st(os.path.join(folder, "ref.safetensors"), [("logits", logits)],
             {"tokens": ",".join(str(int(t)) for t in tok[0])})
    B, T = 3, ctx
    win = torch.randint(0, V, (B, T + 1), generator=gen)
    pl = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    lg = forward(cfg, pl, win[:, :T])
    loss = F.cross_entropy(lg.reshape(-1, V), win[:, 1:].reshape(-1))
    loss.backward()
    tensors = [dict(name=k, shape=list(t.shape), **stats(t.grad.numpy(), rng))
               for k, t in pl.items()]
    print(f"{name}: logits max |.| {logits.abs().max():.3f}, loss {float(loss):.6f}, "
          f"{len(tensors)} tensors")
    return {"model": "tests/fixtures/lm_" + name, "B": B, "T": T,
            "windows": win.tolist(), "loss": float(loss), "tensors": tensors}


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    out = {"provenance": {"command": "/usr/bin/python3 tests/tools/make_lm_variants.py",
                          "torch": torch.__version__, "numpy": np.__version__, "seed": SEED,
                          "reference": "float64 forward and autograd on the files' F32 "
                                       "weights; loss = mean next-token cross-entropy"},
           "cases": [make(n, c, gen, rng) for n, c in MODELS]}
    with open(os.path.join(FIX, "lm_variants.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
