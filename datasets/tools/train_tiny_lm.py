#!/usr/bin/python3
"""train_tiny_lm.py - the reference GPT-2 and LLaMA forward passes in plain torch ops, and the
training of the two tiny byte-level language models bundled in datasets/models/.

Run from the repository root with Debian's python3 (python3-torch, python3-numpy):
    /usr/bin/python3 datasets/tools/train_tiny_lm.py

Writes
  datasets/text/licenses.txt     /usr/share/common-licenses/{MPL-2.0,Apache-2.0,Artistic,GFDL-1.3,
                                 LGPL-3,GPL-3,LGPL-2.1,GPL-2} (in that order)
                                 concatenated verbatim (the corpus; byte-level tokens)
  datasets/text/licenses.bin     the same bytes as nanoGPT raw little-endian uint16 ids
  datasets/models/tiny-gpt2/     config.json + model.safetensors (Hugging Face GPT-2 layout)
  datasets/models/tiny-llama/    config.json + model.safetensors (Hugging Face LLaMA layout)

Split: the last n // 10 tokens of licenses.txt are held out (validation), the rest is training
data (the same split qscope's bench uses). Validation metric: non-overlapping windows w = 0, 1,
... < (n_val - 1) // ctx of the held-out tokens, inputs val[w*ctx : w*ctx+ctx], targets shifted
by one; mean next-token cross-entropy in nats over every position, ppl = exp(loss). Recorded in
each model's __metadata__ (qscope.val_loss, qscope.val_ppl, qscope.train, qscope.split).

The forward functions mirror Hugging Face transformers' math (GPT2LMHeadModel with gelu_new,
LlamaForCausalLM) and are used by tests/tools/make_lm_fixtures.py as the reference for qscope's
C forward pass. Deterministic: fixed seeds, one torch thread.
"""
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The held-out tail (last 10 %) falls in GPL-2, whose language the training part knows from
# LGPL-2.1 and GPL-3: an in-distribution test, not a license the model never saw.
LICENSES = ["MPL-2.0", "Apache-2.0", "Artistic", "GFDL-1.3", "LGPL-3", "GPL-3", "LGPL-2.1",
            "GPL-2"]
DROP = 0.0  # dropout on the embedding and the residual branches while training; 0 = HF eval mode


def drop(x):
    return torch.nn.functional.dropout(x, DROP, training=True) if DROP > 0 else x


# ---- reference forward passes (p: dict of HF tensor names -> tensors) ----------------------

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def causal_attention(q, k, v):
    """q: (B, H, T, hd), k, v: (B, H, T, hd) -> (B, T, H * hd)."""
    B, H, T, hd = q.shape
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, -1) @ v
    return a.transpose(1, 2).reshape(B, T, H * hd)


def gpt2_forward(p, cfg, idx, prefix=""):
    """idx: (B, T) long -> logits (B, T, vocab). Conv1D weights are (in, out): y = x @ W + b."""
    g = lambda n: p[prefix + n]
    d, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg["layer_norm_epsilon"]
    B, T = idx.shape
    x = drop(g("wte.weight")[idx] + g("wpe.weight")[:T])
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        a = layer_norm(x, g(h + "ln_1.weight"), g(h + "ln_1.bias"), eps)
        qkv = a @ g(h + "attn.c_attn.weight") + g(h + "attn.c_attn.bias")
        q, k, v = qkv.split(d, -1)
        sh = lambda t: t.view(B, T, H, d // H).transpose(1, 2)
        a = causal_attention(sh(q), sh(k), sh(v))
        x = x + drop(a @ g(h + "attn.c_proj.weight") + g(h + "attn.c_proj.bias"))
        m = layer_norm(x, g(h + "ln_2.weight"), g(h + "ln_2.bias"), eps)
        m = gelu_new(m @ g(h + "mlp.c_fc.weight") + g(h + "mlp.c_fc.bias"))
        x = x + drop(m @ g(h + "mlp.c_proj.weight") + g(h + "mlp.c_proj.bias"))
    x = layer_norm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
    return x @ g("wte.weight").T


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """x: (B, H, T, hd); HF rotate_half convention: pairs (j, j + hd/2)."""
    T, hd = x.shape[2], x.shape[3]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    f = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    rot = torch.cat([-x2, x1], -1)
    return x * cos + rot * sin


def llama_forward(p, cfg, idx):
    """idx: (B, T) long -> logits (B, T, vocab). Linear weights are (out, in): y = x @ W^T."""
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hk = cfg.get("num_key_value_heads", H)
    hd = d // H
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    B, T = idx.shape
    x = drop(p["model.embed_tokens.weight"][idx])
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        a = rms_norm(x, p[h + "input_layernorm.weight"], eps)
        q = (a @ p[h + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (a @ p[h + "self_attn.k_proj.weight"].T).view(B, T, Hk, hd).transpose(1, 2)
        v = (a @ p[h + "self_attn.v_proj.weight"].T).view(B, T, Hk, hd).transpose(1, 2)
        q, k = rope(q, theta), rope(k, theta)
        k = k.repeat_interleave(H // Hk, 1)
        v = v.repeat_interleave(H // Hk, 1)
        x = x + drop(causal_attention(q, k, v) @ p[h + "self_attn.o_proj.weight"].T)
        m = rms_norm(x, p[h + "post_attention_layernorm.weight"], eps)
        g = m @ p[h + "mlp.gate_proj.weight"].T
        u = m @ p[h + "mlp.up_proj.weight"].T
        x = x + drop((torch.nn.functional.silu(g) * u) @ p[h + "mlp.down_proj.weight"].T)
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else p["lm_head.weight"]
    return x @ head.T


# ---- parameters --------------------------------------------------------------------------

def gpt2_params(cfg, gen, std=0.02, dtype=torch.float32):
    d, L, V, C = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    ff = cfg.get("n_inner") or 4 * d
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype) * std
    p = {"wte.weight": r(V, d), "wpe.weight": r(C, d)}
    for i in range(L):
        h = f"h.{i}."
        p[h + "ln_1.weight"] = 1 + r(d) * (std > 0.05)
        p[h + "ln_1.bias"] = r(d) * (std > 0.05)
        p[h + "attn.c_attn.weight"] = r(d, 3 * d)
        p[h + "attn.c_attn.bias"] = r(3 * d) * (std > 0.05)
        p[h + "attn.c_proj.weight"] = r(d, d) / math.sqrt(2 * L)
        p[h + "attn.c_proj.bias"] = r(d) * (std > 0.05)
        p[h + "ln_2.weight"] = 1 + r(d) * (std > 0.05)
        p[h + "ln_2.bias"] = r(d) * (std > 0.05)
        p[h + "mlp.c_fc.weight"] = r(d, ff)
        p[h + "mlp.c_fc.bias"] = r(ff) * (std > 0.05)
        p[h + "mlp.c_proj.weight"] = r(ff, d) / math.sqrt(2 * L)
        p[h + "mlp.c_proj.bias"] = r(d) * (std > 0.05)
    p["ln_f.weight"] = 1 + r(d) * (std > 0.05)
    p["ln_f.bias"] = r(d) * (std > 0.05)
    return p


def llama_params(cfg, gen, std=0.02, dtype=torch.float32):
    d, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    H, Hk, ff = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    hd = d // H
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype) * std
    p = {"model.embed_tokens.weight": r(V, d)}
    for i in range(L):
        h = f"model.layers.{i}."
        p[h + "input_layernorm.weight"] = 1 + r(d) * (std > 0.05)
        p[h + "self_attn.q_proj.weight"] = r(H * hd, d)
        p[h + "self_attn.k_proj.weight"] = r(Hk * hd, d)
        p[h + "self_attn.v_proj.weight"] = r(Hk * hd, d)
        p[h + "self_attn.o_proj.weight"] = r(d, H * hd) / math.sqrt(2 * L)
        p[h + "post_attention_layernorm.weight"] = 1 + r(d) * (std > 0.05)
        p[h + "mlp.gate_proj.weight"] = r(ff, d)
        p[h + "mlp.up_proj.weight"] = r(ff, d)
        p[h + "mlp.down_proj.weight"] = r(d, ff) / math.sqrt(2 * L)
    p["model.norm.weight"] = 1 + r(d) * (std > 0.05)
    if not cfg.get("tie_word_embeddings"):
        p["lm_head.weight"] = r(V, d)
    return p


# ---- files -------------------------------------------------------------------------------

def to_bf16_bytes(t):
    """Round-to-nearest-even float32 -> bfloat16 bytes (little-endian)."""
    u = t.detach().contiguous().float().numpy().view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def write_st(path, named, meta=None, dtype="F32"):
    """named: list of (name, tensor). dtype F32, F16 or BF16 for every tensor."""
    header, off, blobs = {}, 0, []
    if meta:
        header["__metadata__"] = meta
    for name, t in named:
        if dtype == "F32":
            b = t.detach().contiguous().float().numpy().astype("<f4").tobytes()
        elif dtype == "F16":
            b = t.detach().contiguous().float().numpy().astype("<f2").tobytes()
        else:
            b = to_bf16_bytes(t)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def write_model(folder, cfg, p, meta=None, dtype="F32", prefix=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_st(os.path.join(folder, "model.safetensors"),
             [(prefix + k, v) for k, v in p.items()], meta, dtype)


# ---- training ----------------------------------------------------------------------------

GPT2_CFG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 256,
            "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_ctx": 64,
            "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True}
LLAMA_CFG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256,
             "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 172, "hidden_act": "silu",
             "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False}


def val_loss(fwd, p, cfg, val, ctx):
    nw = (len(val) - 1) // ctx
    v = val.astype(np.int64)
    x = torch.from_numpy(np.stack([v[w * ctx: w * ctx + ctx] for w in range(nw)]))
    y = torch.from_numpy(np.stack([v[w * ctx + 1: w * ctx + ctx + 1] for w in range(nw)]))
    with torch.no_grad():
        # float64 for the recorded figure: qscope's C evaluation is compared against it
        p64 = {k: v.double() for k, v in p.items()}
        logits = fwd(p64, cfg, x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
    return float(loss), nw * ctx


def train(name, fwd, params_fn, cfg, data, steps, lr, batch, seed, dropout, wd):
    global DROP
    ctx = 64
    n = len(data)
    off = n - n // 10
    tr, val = data[:off], data[off:]
    gen = torch.Generator().manual_seed(seed)
    p = params_fn(cfg, gen)
    for v in p.values():
        v.requires_grad_(True)
    opt = torch.optim.AdamW(list(p.values()), lr=lr, betas=(0.9, 0.95), weight_decay=wd)
    t0 = time.time()
    DROP = dropout
    for step in range(steps):
        cur = lr * 0.5 * (1 + math.cos(math.pi * step / steps)) if step > 50 else lr * step / 50
        for gr in opt.param_groups:
            gr["lr"] = cur
        ix = torch.randint(0, len(tr) - ctx - 1, (batch,), generator=gen)
        x = torch.stack([torch.from_numpy(tr[i: i + ctx].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tr[i + 1: i + 1 + ctx].astype(np.int64)) for i in ix])
        logits = fwd(p, cfg, x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
    DROP = 0.0
    p = {k: v.detach() for k, v in p.items()}
    vl, ntok = val_loss(fwd, p, cfg, val, ctx)
    cmd = (f"/usr/bin/python3 datasets/tools/train_tiny_lm.py (torch {torch.__version__}, "
           f"1 thread, "
           f"seed {seed}, {steps} steps, batch {batch}, AdamW lr {lr} cosine, weight decay {wd}, "
           f"dropout {dropout}, ctx {ctx})")
    meta = {"qscope.train": cmd, "qscope.data": "datasets/text/licenses.txt",
            "qscope.split": f"train tokens [0, {off}), validation tokens [{off}, {n})",
            "qscope.val_tokens": str(ntok), "qscope.val_loss": f"{vl:.6f}",
            "qscope.val_ppl": f"{math.exp(vl):.6f}"}
    folder = os.path.join(ROOT, "datasets", "models", name)
    write_model(folder, cfg, p, meta)
    print(f"{name}: val loss {vl:.4f} ppl {math.exp(vl):.4f} over {ntok} tokens, "
          f"{time.time() - t0:.0f} s", file=sys.stderr)


DROPOUT = float(os.environ.get("TINY_LM_DROPOUT", "0.2"))


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = b"".join(open(f"/usr/share/common-licenses/{n}", "rb").read() for n in LICENSES)
    os.makedirs(os.path.join(ROOT, "datasets", "text"), exist_ok=True)
    with open(os.path.join(ROOT, "datasets", "text", "licenses.txt"), "wb") as f:
        f.write(text)
    data = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    with open(os.path.join(ROOT, "datasets", "text", "licenses.bin"), "wb") as f:
        f.write(data.astype("<u2").tobytes())
    steps = int(os.environ.get("TINY_LM_STEPS", "1800"))
    train("tiny-gpt2", gpt2_forward, gpt2_params, GPT2_CFG, data, steps, 3e-3, 32, 1, DROPOUT, 0.1)
    train("tiny-llama", llama_forward, llama_params, LLAMA_CFG, data, steps, 3e-3, 32, 2, DROPOUT,
          0.1)


if __name__ == "__main__":
    main()
