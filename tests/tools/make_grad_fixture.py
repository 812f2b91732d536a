#!/usr/bin/python3
"""make_grad_fixture.py - PyTorch autograd's gradients of the transformers' loss, the reference
for qscope's backward pass (src/model/lm_grad.c, tests/unit/test_lm_grad.c).

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 tests/tools/make_grad_fixture.py

Writes tests/fixtures/lm_grad.json. For each model folder (the bundled tiny-gpt2 and tiny-llama,
the fixtures with grouped-query attention and an untied head, and a GPT-2 with "transformer."
names and a narrower MLP) it reads config.json and
model.safetensors itself (F32, F16 or BF16), builds the model in plain torch (its own code, no
transformers library: GPT-2 with LayerNorm, gelu_new and a tied head; LLaMA with RMSNorm, RoPE
in Hugging Face's rotate_half convention, grouped-query attention by repeating key/value heads
and SwiGLU), and differentiates the mean next-token cross-entropy of B windows of T tokens in
float64 on the file's weights. The windows are stored in the fixture (B lists of T + 1 ids:
inputs and, shifted by one, targets): bytes of datasets/text/licenses.txt, taken modulo the
vocabulary for the fixtures' 40-token vocabularies.

Per parameter tensor (Hugging Face names without GPT-2's "transformer." prefix; site weights in
qscope's (out, in) layout, GPT-2's Conv1D ones transposed; a tied head has no tensor, its
gradient is part of the embedding's):
  norm   the gradient's Euclidean norm
  proj   its dot products with two fixed sign vectors s_k[i] = +1 or -1 by the top bit of
         splitmix64(k * 2^32 + i), k = 1, 2 (i the flat row-major index): whole-tensor checks
         without storing the tensor
  idx, val  sampled entries: the 4 largest |g| and 4 random ones among those with |g| >= the
         tensor's rms (entries near 0 have no meaningful relative error in float32)
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "lm_grad.json")
SEED = 20261201
CASES = [  # folder, windows B, tokens per window T
    ("datasets/models/tiny-gpt2", 4, 64),
    ("datasets/models/tiny-llama", 4, 64),
    ("tests/fixtures/lm_llama_gqa", 3, 12),
    ("tests/fixtures/lm_llama_untied", 3, 16),
    ("tests/fixtures/lm_gpt2_prefix", 2, 16),  # "transformer." names, n_inner 48
]
M64 = (1 << 64) - 1


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base, out = 8 + n, {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[base + a:base + b]
        if t["dtype"] == "F32":
            v = np.frombuffer(buf, "<f4")
        elif t["dtype"] == "F16":
            v = np.frombuffer(buf, "<f2").astype(np.float32)
        elif t["dtype"] == "BF16":
            v = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']}")
        out[name] = torch.tensor(v.reshape(t["shape"]).astype(np.float64))
    return out


def gpt2_params(cfg, st):
    pre = "transformer." if "transformer.wte.weight" in st else ""
    g = lambda k: st[pre + k]  # noqa: E731
    p = {"wte.weight": g("wte.weight"), "wpe.weight": g("wpe.weight")}
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        for k in ("ln_1.weight", "ln_1.bias"):
            p[h + k] = g(h + k)
        for s in ("attn.c_attn", "attn.c_proj"):
            p[h + s + ".weight"] = g(h + s + ".weight").t().contiguous()  # Conv1D -> (out, in)
            p[h + s + ".bias"] = g(h + s + ".bias")
        for k in ("ln_2.weight", "ln_2.bias"):
            p[h + k] = g(h + k)
        for s in ("mlp.c_fc", "mlp.c_proj"):
            p[h + s + ".weight"] = g(h + s + ".weight").t().contiguous()
            p[h + s + ".bias"] = g(h + s + ".bias")
    p["ln_f.weight"], p["ln_f.bias"] = g("ln_f.weight"), g("ln_f.bias")
    if not cfg.get("tie_word_embeddings", True):
        p["lm_head.weight"] = st["lm_head.weight"]
    return p


def gpt2_forward(cfg, p, idx):
    d, eps, T = cfg["n_embd"], cfg.get("layer_norm_epsilon", 1e-5), idx.shape[1]
    x = p["wte.weight"][idx] + p["wpe.weight"][:T]
    for i in range(cfg["n_layer"]):
        x = gpt2_block(cfg, p, x, i)
    x = F.layer_norm(x, (d,), p["ln_f.weight"], p["ln_f.bias"], eps)
    return F.linear(x, p.get("lm_head.weight", p["wte.weight"]))


def gpt2_block(cfg, p, x, i, cap=None):
    """Block i on the residual stream x: (B, T, d). cap (a dict, optional) receives each linear
    site's pre-activation by its name (tests/tools/q1_ref.py reads them)."""
    d, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    B, T, _ = x.shape
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def lin(x, s):
        y = F.linear(x, p[s + ".weight"], p[s + ".bias"])
        if cap is not None:
            cap[s] = y.reshape(-1, y.shape[-1])
        return y

    sh = lambda t: t.view(B, T, H, d // H).transpose(1, 2)  # noqa: E731
    h = f"h.{i}."
    a = F.layer_norm(x, (d,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
    q, k, v = lin(a, h + "attn.c_attn").split(d, -1)
    s = (sh(q) @ sh(k).transpose(-1, -2)) / math.sqrt(d // H)
    s = s.masked_fill(~mask, float("-inf"))
    a = (torch.softmax(s, -1) @ sh(v)).transpose(1, 2).reshape(B, T, d)
    x = x + lin(a, h + "attn.c_proj")
    m = F.layer_norm(x, (d,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
    u = lin(m, h + "mlp.c_fc")  # gelu_new, written out
    m = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    return x + lin(m, h + "mlp.c_proj")


def llama_params(cfg, st):
    p = {"model.embed_tokens.weight": st["model.embed_tokens.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        for k in ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                  "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                  "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                  "mlp.down_proj.weight"):
            p[h + k] = st[h + k]
    p["model.norm.weight"] = st["model.norm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        p["lm_head.weight"] = st["lm_head.weight"]
    return p


def llama_forward(cfg, p, idx):
    x = p["model.embed_tokens.weight"][idx]
    for i in range(cfg["num_hidden_layers"]):
        x = llama_block(cfg, p, x, i)
    eps = cfg.get("rms_norm_eps", 1e-6)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * p["model.norm.weight"]
    return F.linear(x, p.get("lm_head.weight", p["model.embed_tokens.weight"]))


def llama_block(cfg, p, x, i):
    """Block i on the residual stream x: (B, T, d)."""
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hk = cfg.get("num_key_value_heads", H)
    hd, eps, theta = d // H, cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    B, T, _ = x.shape
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = lambda t: torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1)  # noqa: E731
    rope = lambda t: t * cos + rot(t) * sin  # noqa: E731
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    h = f"model.layers.{i}."
    a = rms(x, p[h + "input_layernorm.weight"])
    q = F.linear(a, p[h + "self_attn.q_proj.weight"]).view(B, T, H, hd).transpose(1, 2)
    k = F.linear(a, p[h + "self_attn.k_proj.weight"]).view(B, T, Hk, hd).transpose(1, 2)
    v = F.linear(a, p[h + "self_attn.v_proj.weight"]).view(B, T, Hk, hd).transpose(1, 2)
    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    s = s.masked_fill(~mask, float("-inf"))
    a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, d)
    x = x + F.linear(a, p[h + "self_attn.o_proj.weight"])
    m = rms(x, p[h + "post_attention_layernorm.weight"])
    m = F.silu(F.linear(m, p[h + "mlp.gate_proj.weight"])) * F.linear(m, p[h + "mlp.up_proj.weight"])
    return x + F.linear(m, p[h + "mlp.down_proj.weight"])


def signs(k, n):
    """s_k[i] for i < n: splitmix64(k * 2^32 + i), +1 when its top bit is 0."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(k << 32)) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.where(z >> np.uint64(63), -1.0, 1.0)


def case(folder, B, T, rng, text):
    with open(os.path.join(ROOT, folder, "config.json")) as f:
        cfg = json.load(f)
    st = read_st(os.path.join(ROOT, folder, "model.safetensors"))
    gpt2 = cfg["model_type"] == "gpt2"
    p = gpt2_params(cfg, st) if gpt2 else llama_params(cfg, st)
    p = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    V = cfg["vocab_size"]
    starts = sorted(int(s) for s in rng.choice(len(text) - T - 1, B, replace=False))
    win = [[text[s + t] % V for t in range(T + 1)] for s in starts]
    w = torch.tensor(win, dtype=torch.long)
    logits = (gpt2_forward if gpt2 else llama_forward)(cfg, p, w[:, :T])
    loss = F.cross_entropy(logits.reshape(-1, V), w[:, 1:].reshape(-1))
    loss.backward()
    tensors = []
    for name, t in p.items():
        g = t.grad.numpy().reshape(-1)
        rms = float(np.sqrt(np.mean(g * g)))
        top = [int(i) for i in np.argsort(-np.abs(g))[:4]]
        pool = [int(i) for i in np.nonzero(np.abs(g) >= rms)[0] if int(i) not in top]
        pick = top + sorted(int(i) for i in rng.choice(pool, min(4, len(pool)), replace=False))
        tensors.append({"name": name, "shape": list(t.shape), "norm": float(np.linalg.norm(g)),
                        "proj": [float(np.dot(g, signs(k, g.size))) for k in (1, 2)],
                        "idx": pick, "val": [float(g[i]) for i in pick]})
    return {"model": folder, "B": B, "T": T, "windows": win, "loss": float(loss),
            "tensors": tensors, "hvp": hvp(cfg, st, gpt2, w, T, rng)}


def stats(g, rng):
    g = g.reshape(-1)
    rms = float(np.sqrt(np.mean(g * g)))
    top = [int(i) for i in np.argsort(-np.abs(g))[:4]]
    pool = [int(i) for i in np.nonzero(np.abs(g) >= rms)[0] if int(i) not in top]
    pick = top + sorted(int(i) for i in rng.choice(pool, min(4, len(pool)), replace=False))
    return {"norm": float(np.linalg.norm(g)),
            "proj": [float(np.dot(g, signs(k, g.size))) for k in (1, 2)],
            "idx": pick, "val": [float(g[i]) for i in pick]}


def hvp(cfg, st, gpt2, w, T, rng):
    """H v for v = s_1 (the first sign vector, flat (out, in) index) on every site weight but a
    tied head's, whose block of H v is still reported: the head as the output projection alone
    (a separate leaf; the embedding lookup keeps the embedding). Exact double backward."""
    p = gpt2_params(cfg, st) if gpt2 else llama_params(cfg, st)
    tied = "lm_head.weight" not in p
    if tied:
        p["lm_head.weight"] = (p["wte.weight"] if gpt2 else p["model.embed_tokens.weight"]).clone()
    p = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    sites = [k for k in p if k.endswith(".weight") and p[k].dim() == 2 and "wte" not in k
             and "wpe" not in k and "embed_tokens" not in k and k != "lm_head.weight"]
    sites.append("lm_head.weight")
    V = cfg["vocab_size"]
    logits = (gpt2_forward if gpt2 else llama_forward)(cfg, p, w[:, :T])
    loss = F.cross_entropy(logits.reshape(-1, V), w[:, 1:].reshape(-1))
    g = torch.autograd.grad(loss, [p[k] for k in sites], create_graph=True)
    vs = [torch.tensor(signs(1, p[k].numel()).reshape(p[k].shape)) for k in sites]
    if tied:
        vs[-1] = torch.zeros_like(vs[-1])
    gv = sum((a * b).sum() for a, b in zip(g, vs))
    hv = torch.autograd.grad(gv, [p[k] for k in sites])
    return [dict(name=k[:-len(".weight")], **stats(h.numpy(), rng)) for k, h in zip(sites, hv)]


def sensitivity(folder, data, nwin):
    """`sensitivity method=grad,fisher` as qscope defines it for a transformer: the calibration
    windows w = 0 .. nwin - 1 of the token file (inputs tok[w ctx .. w ctx + ctx), targets
    shifted by one); grad_norm = ||dL/dW|| of the mean loss over all of them; fisher_trace = sum
    over W's entries of the mean over windows of (dL_w/dW)^2, L_w the window's own mean loss.
    The tied head's weight is a separate leaf used by the output projection only (quantizing it
    leaves the embedding lookup float)."""
    with open(os.path.join(ROOT, folder, "config.json")) as f:
        cfg = json.load(f)
    st = read_st(os.path.join(ROOT, folder, "model.safetensors"))
    p = gpt2_params(cfg, st)
    p.setdefault("lm_head.weight", p["wte.weight"].clone())
    p = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    sites = [k for k in p if k.endswith(".weight") and ("attn.c_" in k or "mlp.c_" in k)]
    sites.append("lm_head.weight")
    ctx, V = cfg["n_positions"], cfg["vocab_size"]
    w = torch.tensor([list(data[i * ctx:i * ctx + ctx + 1]) for i in range(nwin)],
                     dtype=torch.long)
    loss = lambda x: F.cross_entropy(gpt2_forward(cfg, p, x[:, :ctx]).reshape(-1, V),  # noqa
                                     x[:, 1:].reshape(-1))
    g = torch.autograd.grad(loss(w), [p[s] for s in sites])
    fisher = [torch.zeros_like(p[s]) for s in sites]
    for i in range(nwin):
        gi = torch.autograd.grad(loss(w[i:i + 1]), [p[s] for s in sites])
        for f, x in zip(fisher, gi):
            f += x * x / nwin
    return {"model": folder, "windows": nwin, "ctx": ctx,
            "sites": [s[:-len(".weight")] for s in sites],
            "grad_norm": [float(x.norm()) for x in g],
            "fisher_trace": [float(f.sum()) for f in fisher]}


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    with open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "rb") as f:
        text = f.read()
    out = {"provenance": {"command": "/usr/bin/python3 tests/tools/make_grad_fixture.py",
                          "torch": torch.__version__, "numpy": np.__version__, "seed": SEED,
                          "reference": "float64 autograd on the files' weights; loss = mean "
                                       "next-token cross-entropy over the B T positions"},
           "cases": [case(f, B, T, rng, text) for f, B, T in CASES]}
    with open(os.path.join(ROOT, "tests", "fixtures", "delta_gpt2", "data.txt"), "rb") as f:
        out["sensitivity"] = sensitivity("tests/fixtures/delta_gpt2", f.read(), 8)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    for c in out["cases"]:
        print(f"{c['model']}: loss {c['loss']:.6f}, {len(c['tensors'])} tensors")


if __name__ == "__main__":
    main()
