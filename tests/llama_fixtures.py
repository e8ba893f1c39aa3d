"""Test helpers: tiny random transformers Llamas on disk, in HF and in Meta layout.

Reusable by any test that needs a real checkpoint to convert (no hub access here)::

    hf_model, hf_dir = make_hf_llama(tmp_path / "hf", n_kv_heads=2)
    meta_dir = export_meta_checkpoint(hf_model, tmp_path / "meta", n_shards=2)

The Meta export follows Meta's llama repo layout (``params.json`` + ``consolidated.NN.pth``
tensor-parallel shards, rotary q/k rows interleaved) and is the inverse of transformers'
``convert_llama_weights_to_hf.py``, written independently of audiochat_jax.convert.
"""
from __future__ import annotations

import json
import os

import torch


def make_hf_llama(path, *, vocab_size=67, dim=32, n_layers=2, n_heads=4, n_kv_heads=4,
                  ffn_dim=48, rope_theta=50000.0, norm_eps=1e-5, tie_embeddings=False,
                  max_seq_len=128, init_std=0.2, seed=0, max_shard_size=None):
    """A random ``LlamaForCausalLM`` (float32, eval mode) saved as safetensors under ``path``.

    ``init_std`` is large (HF's 0.02 gives near-uniform logits, so greedy decoding would hinge
    on rounding). ``max_shard_size`` (e.g. "20KB") forces sharded files + index.json.
    Returns ``(model, str(path))``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=dim, intermediate_size=ffn_dim,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        max_position_embeddings=max_seq_len, rms_norm_eps=norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=tie_embeddings, initializer_range=init_std,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms init to ones; randomise them so a dropped scale would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(path), safe_serialization=True, **kw)
    return model, str(path)


def _to_meta_rows(w, n_heads):
    """HF rotate-half q/k rows -> Meta's interleaved rows (inverse of HF's ``permute``)."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def export_meta_checkpoint(model, path, n_shards=2, dtype=torch.float32):
    """Writes ``model`` (an HF LlamaForCausalLM) as a Meta checkpoint with ``n_shards`` TP shards.

    Split axes are Meta's fairscale layers: column-parallel (wq, wk, wv, w1, w3, output) split
    rows, row-parallel (wo, w2) and the Llama-2 ParallelEmbedding split columns; norms are
    replicated. Returns ``str(path)``.
    """
    cfg = model.config
    os.makedirs(path, exist_ok=True)
    sd = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    full = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], 1),
            "norm.weight": (sd["model.norm.weight"], None),
            "output.weight": (sd.get("lm_head.weight", sd["model.embed_tokens.weight"]), 0)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        full.update({
            f"layers.{i}.attention.wq.weight": (_to_meta_rows(sd[p + "self_attn.q_proj.weight"], n_heads), 0),
            f"layers.{i}.attention.wk.weight": (_to_meta_rows(sd[p + "self_attn.k_proj.weight"], n_kv), 0),
            f"layers.{i}.attention.wv.weight": (sd[p + "self_attn.v_proj.weight"], 0),
            f"layers.{i}.attention.wo.weight": (sd[p + "self_attn.o_proj.weight"], 1),
            f"layers.{i}.feed_forward.w1.weight": (sd[p + "mlp.gate_proj.weight"], 0),
            f"layers.{i}.feed_forward.w2.weight": (sd[p + "mlp.down_proj.weight"], 1),
            f"layers.{i}.feed_forward.w3.weight": (sd[p + "mlp.up_proj.weight"], 0),
            f"layers.{i}.attention_norm.weight": (sd[p + "input_layernorm.weight"], None),
            f"layers.{i}.ffn_norm.weight": (sd[p + "post_attention_layernorm.weight"], None),
        })
    for s in range(n_shards):
        shard = {}
        for name, (w, axis) in full.items():
            shard[name] = w.clone() if axis is None else torch.chunk(w, n_shards, dim=axis)[s].clone()
        shard["rope.freqs"] = torch.zeros(cfg.hidden_size // n_heads // 2)  # Meta ships it; unused
        torch.save(shard, os.path.join(path, f"consolidated.{s:02d}.pth"))
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": n_heads,
              "norm_eps": cfg.rms_norm_eps, "vocab_size": -1, "multiple_of": 16}
    if n_kv != n_heads:
        params["n_kv_heads"] = n_kv
    theta = (cfg.rope_parameters or {}).get("rope_theta", 10000.0)
    if theta != 10000.0:
        params["rope_theta"] = theta
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(params, f)
    return str(path)


def random_llama_params(cfg, seed=0, std=0.2):
    """Random params for an audiochat_jax LlamaConfig, drawn with numpy.

    Shapes come from ``jax.eval_shape`` (tracing only): compiling the threefry random init
    of even a tiny model takes tens of seconds on a busy 2-core CPU. Norm scales are
    1 + N(0, 0.2) so a dropped scale shows. Returns a tree of float32 numpy arrays.
    """
    import flax.linen as nn
    import jax
    import numpy as np
    from audiochat_jax.models.llama import init_params
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    rng = np.random.RandomState(seed)

    def draw(x):
        if x.ndim == 1:
            return (1.0 + 0.2 * rng.randn(*x.shape)).astype(np.float32)
        return (std * rng.randn(*x.shape)).astype(np.float32)
    return jax.tree_util.tree_map(draw, shapes)
