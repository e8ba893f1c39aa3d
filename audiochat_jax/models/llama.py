"""Llama-2 in Flax linen: the frozen LLM that learns to listen (and the mini world's tiny LM).

One module for every size, equal to transformers' ``LlamaForCausalLM`` on the same weights
(tests/test_llama.py): RMSNorm, rotary embeddings in the HF "rotate-half" layout (the Meta
converter permutes q/k rows into it), SwiGLU MLP, grouped-query attention, optional tied
embeddings, parameter dtype separate from compute dtype.

Entry is by token ids *or* by input embeddings. The alignment stage uses the latter::

    model = Llama(cfg)
    pre = model.apply({"params": llm}, prefix_ids, method=Llama.embed)     # [b, p, dim]
    suf = model.apply({"params": llm}, suffix_ids, method=Llama.embed)     # [b, s, dim]
    x = jnp.concatenate([pre, audio_embeds, suf], axis=1)                  # [b, l, dim]
    logits = model.apply({"params": llm}, embeddings=x, positions=pos, mask=m)

``llm`` is a closed-over constant there (or wrapped in ``jax.lax.stop_gradient``), so
gradients flow into ``audio_embeds`` only; nothing in this module depends on which input
was used.

Masking: ``mask[b, t]`` is True for a real token. Token ``t`` attends to slot ``s`` iff
``s <= t`` (slot order, i.e. causal) and slot ``s`` holds a real token. Rotary phases come
from the explicit ``positions``, so left padding works by giving real tokens positions
0, 1, ... (``positions = max(cumsum(mask) - 1, 0)``, as transformers' ``generate`` does).
Packed rows (several sequences per row, training only) add ``segment_ids``: attention stays
inside each segment, and positions restart at 0 in each.

Dot products take their inputs in the compute dtype and give their result in it; inside, the
matrix units (and XLA:CPU) accumulate in float32; each backend gets its fast form of a
bfloat16 product (models/precision.py). The backward's dots stay in the compute dtype too.
Norms, rotary phases, the softmax and the logits are float32.

KV cache (``decode=True``): an explicit pytree from ``init_cache``; each call writes its keys
and values at ``cache["index"]`` and returns the updated cache. The cache carries its own
key mask, so padding written during prefill stays masked while decoding.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import layer_stack, precision
from audiochat_jax.util.config_fields import DictConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Compute dtypes: a DTYPES key, or "auto" (``auto_compute_dtype``: the faster one here).
COMPUTE_DTYPES = (*DTYPES, "auto")


def cpu_has_bf16_dots() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16; /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=None)
def auto_compute_dtype(backend: str | None = None) -> str:
    """What ``dtype="auto"`` computes in: bfloat16 on GPUs and TPUs; on a CPU bfloat16 where it
    multiplies bfloat16 natively (its bf16 dots with float32 accumulation then run 2-6x the
    float32 ones: bench/llm.py prints both), else float32 (bfloat16 would be emulated)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_has_bf16_dots() else "float32"


def compute_dtype(name: str):
    """The jnp dtype of a compute-dtype setting (``"auto"`` resolved for this backend)."""
    return DTYPES[auto_compute_dtype() if name == "auto" else name]

# What the backward pass keeps instead of recomputing (jax.checkpoint_policies).
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# `jax.nn.dot_product_attention(implementation=...)` for each setting: "xla" everywhere,
# "cudnn" fused flash attention on NVIDIA GPUs, "auto" lets JAX pick. Not XLA's: odd lengths get one masked slot (cuDNN trains only
# even lengths; see Llama.hidden_states).
ATTENTION_IMPLS = {"xla": "xla", "cudnn": "cudnn", "auto": None}


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DictConfig):
    """Architecture and numerics of a Llama model (all plain JSON-able fields)."""
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dtype: str = "auto"             # compute dtype (activations, dot inputs): COMPUTE_DTYPES
    param_dtype: str = "float32"    # storage dtype of the parameters
    remat_policy: str = "none"      # a key of REMAT_POLICIES
    scan_layers: bool = False       # one scanned layer (fast compile) vs n_layers unrolled
    attention_impl: str = "xla"     # a key of ATTENTION_IMPLS

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"LlamaConfig.{field}={getattr(self, field)!r}: {why}")
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if not isinstance(getattr(self, f), (int, np.integer)) or getattr(self, f) <= 0:
                bad(f, "must be a positive integer")
        if self.dim % self.n_heads:
            bad("dim", f"must be divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            bad("dim", "dim // n_heads (the head width) must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            bad("n_kv_heads", f"must divide n_heads={self.n_heads} (grouped-query attention)")
        if self.dtype not in COMPUTE_DTYPES:
            bad("dtype", f"must be one of {sorted(COMPUTE_DTYPES)}")
        if self.param_dtype not in DTYPES:
            bad("param_dtype", f"must be one of {sorted(DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"must be one of {sorted(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            bad("attention_impl", f"must be one of {sorted(ATTENTION_IMPLS)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads



# Published Llama-2 dimensions: Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned
# Chat Models" (arXiv:2307.09288), Table 1 (context 4k, GQA for 70B), and the params.json /
# config.json shipped with meta-llama/Llama-2-{7b,13b,70b}-chat(-hf): hidden_size,
# intermediate_size, num_attention_heads, num_key_value_heads, rms_norm_eps=1e-5, vocab 32000.
LLAMA2_SIZES = {
    "7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
               ffn_dim=11008, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "13b": dict(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, n_kv_heads=40,
                ffn_dim=13824, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "70b": dict(vocab_size=32000, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                ffn_dim=28672, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
}


def _kernel(module: nn.Module, name: str, shape, names, cfg: LlamaConfig):
    init = nn.initializers.normal(0.02)  # transformers' initializer_range
    return module.param(name, nn.with_logical_partitioning(init, names), shape,
                        DTYPES[cfg.param_dtype])


class RMSNorm(nn.Module):
    """``x / rms(x) * scale`` over the last axis, statistics in float32. [..., dim] -> same."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), DTYPES[cfg.param_dtype])
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        # transformers: weight * hidden.to(input_dtype) -- the product is in compute dtype.
        dtype = compute_dtype(cfg.dtype)
        return scale.astype(dtype) * y.astype(dtype)


def rotary_tables(positions, head_dim: int, theta: float):
    """cos/sin of the rotary phases: positions [batch, length] -> 2 x [batch, length, 1, head_dim/2]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rotary(x, cos, sin):
    """Rotate-half rotary embedding (HF layout). x [batch, length, heads, head_dim] -> same dtype."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention. x [batch, length, dim] -> [batch, length, dim].

    ``attn_mask`` [batch, 1, length, slots] bool; ``layer_cache`` None or (k, v) each
    [batch, slots, n_kv_heads, head_dim], into which this call's keys/values are written at
    ``index``; returns ``(out, new_layer_cache)``.
    """
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, rope, attn_mask, layer_cache=None, index=None):
        cfg = self.config
        dtype, d, h, kvh, hd = compute_dtype(cfg.dtype), cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        wq = _kernel(self, "q", (d, h, hd), ("embed", "heads", "kv"), cfg)
        wk = _kernel(self, "k", (d, kvh, hd), ("embed", "kv_heads", "kv"), cfg)
        wv = _kernel(self, "v", (d, kvh, hd), ("embed", "kv_heads", "kv"), cfg)
        wo = _kernel(self, "o", (h, hd, d), ("heads", "kv", "embed"), cfg)

        q = precision.einsum("bld,dhk->blhk", x, wq, dtype)
        k = precision.einsum("bld,dhk->blhk", x, wk, dtype)
        v = precision.einsum("bld,dhk->blhk", x, wv, dtype)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "act_kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "act_kv_heads", "act_kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "act_kv_heads", "act_kv"))
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        if layer_cache is not None:
            ck, cv = layer_cache
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
            layer_cache = (k, v)

        out = jax.nn.dot_product_attention(
            q, k.astype(dtype), v.astype(dtype), mask=attn_mask, scale=1.0 / float(np.sqrt(hd)),
            implementation=ATTENTION_IMPLS[cfg.attention_impl])
        out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "act_kv"))
        return precision.einsum("blhk,hkd->bld", out, wo, dtype), layer_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). [batch, length, dim] -> same."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype = compute_dtype(cfg.dtype)
        gate = _kernel(self, "gate", (cfg.dim, cfg.ffn_dim), ("embed", "mlp"), cfg)
        up = _kernel(self, "up", (cfg.dim, cfg.ffn_dim), ("embed", "mlp"), cfg)
        down = _kernel(self, "down", (cfg.ffn_dim, cfg.dim), ("mlp", "embed"), cfg)
        hidden = (nn.silu(precision.einsum("bld,df->blf", x, gate, dtype))
                  * precision.einsum("bld,df->blf", x, up, dtype))
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "act_mlp"))
        return precision.einsum("blf,fd->bld", hidden, down, dtype)


class Block(nn.Module):
    """Pre-norm transformer layer. x [batch, length, dim] -> (x, new_layer_cache)."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, layer_cache, rope, attn_mask, index):
        attn, layer_cache = Attention(self.config, name="attn")(
            RMSNorm(self.config, name="attn_norm")(x), rope, attn_mask, layer_cache, index)
        x = x + attn
        x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), layer_cache


def init_cache(config: LlamaConfig, batch: int, max_len: int) -> dict:
    """An empty KV cache for ``max_len`` slots.

    ``{"k", "v": [n_layers, batch, max_len, n_kv_heads, head_dim] (compute dtype),
    "mask": [batch, max_len] bool (which slots hold real tokens), "index": int32 scalar
    (the next free slot)}``.
    """
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
    dtype = compute_dtype(config.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


def stack_layer_params(params: dict, n_layers: int) -> dict:
    """Unrolled params (``layers_0`` ... ``layers_{n-1}``) -> scanned params (``layers`` with a
    leading [n_layers] axis); models/layer_stack.py, checking the depth."""
    found = len(layer_stack.layer_keys(params))
    if found != n_layers:
        raise ValueError(f"stack_layer_params: the params hold {found} layers, the config {n_layers}")
    return layer_stack.stack_layers(params)


def unstack_layer_params(params: dict) -> dict:
    """Inverse of ``stack_layer_params``."""
    return layer_stack.unstack_layers(params)


class Llama(nn.Module):
    """Decoder-only Llama. See the module docstring for masking, caching and embeddings entry."""
    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (cfg.vocab_size, cfg.dim), DTYPES[cfg.param_dtype])
        block = Block
        policy = REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            # prevent_cse is only needed outside scan (scan already blocks CSE across steps).
            block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            self.layers = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="layers")
        else:
            self.blocks = [block(cfg, name=f"layers_{i}") for i in range(cfg.n_layers)]
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = self.param(
                "lm_head", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
                (cfg.dim, cfg.vocab_size), DTYPES[cfg.param_dtype])

    def embed(self, tokens):
        """Token embeddings: tokens [batch, length] int -> [batch, length, dim] compute dtype."""
        x = jnp.take(self.embedding, tokens, axis=0).astype(compute_dtype(self.config.dtype))
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

    def logits(self, hidden):
        """LM head: hidden [batch, length, dim] -> logits [batch, length, vocab] float32."""
        dtype = compute_dtype(self.config.dtype)
        if (dtype == jnp.bfloat16 and precision.float32_result_dots()
                and math.prod(hidden.shape[:-1]) <= precision.SMALL_ROWS):
            dtype = jnp.float32  # a CPU matrix-vector product: models/precision.py
        if self.config.tie_embeddings:
            out = jnp.einsum("bld,vd->blv", hidden.astype(dtype), self.embedding.astype(dtype),
                             preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("bld,dv->blv", hidden.astype(dtype), self.lm_head.astype(dtype),
                             preferred_element_type=jnp.float32)
        return nn.with_logical_constraint(out, ("batch", "length", "act_vocab"))

    def hidden_states(self, tokens=None, *, embeddings=None, positions, mask, cache=None,
                      decode=False, segment_ids=None):
        """Final-normed hidden states [batch, length, dim] (and the updated cache if ``decode``).

        Exactly one of ``tokens`` [batch, length] int32 / ``embeddings`` [batch, length, dim].
        ``positions`` [batch, length] int32, ``mask`` [batch, length] bool (True = real).
        ``segment_ids`` [batch, length] int32 (packed sequences, no cache): a token attends
        only to earlier tokens of its own segment; restart ``positions`` at each segment.
        """
        cfg = self.config
        if (tokens is None) == (embeddings is None):
            raise ValueError("Llama: pass exactly one of tokens=[batch, length] or "
                             "embeddings=[batch, length, dim]")
        if decode != (cache is not None):
            raise ValueError("Llama: decode=True needs cache=init_cache(config, batch, max_len) "
                             "and a cache is only used with decode=True")
        x = self.embed(tokens) if tokens is not None else embeddings.astype(compute_dtype(cfg.dtype))
        if x.shape[-1] != cfg.dim:
            raise ValueError(f"Llama: embeddings have width {x.shape[-1]}, the model's dim is {cfg.dim}")
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        length = x.shape[1]
        mask = mask.astype(bool)
        # cuDNN's fused attention has no backward pass for odd lengths (jax 0.11.2 on an H100,
        # the 7B align step: "Unsupported sequence length Q 261, KV 261"). One more slot at the
        # end (not a real token; causal attention hides it from the real ones), dropped from the
        # output, evens it.
        even_pad = cache is None and ATTENTION_IMPLS[cfg.attention_impl] != "xla" and length % 2 == 1
        if even_pad:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
            positions = jnp.pad(positions, ((0, 0), (0, 1)), mode="edge")
            mask = jnp.pad(mask, ((0, 0), (0, 1)))
            if segment_ids is not None:  # the last segment's: its query is never fully masked
                segment_ids = jnp.pad(segment_ids, ((0, 0), (0, 1)), mode="edge")
            length += 1
        rope = rotary_tables(positions, cfg.head_dim, cfg.rope_theta)

        if cache is None:
            index, key_mask, q_slots = None, mask, jnp.arange(length)
            k_slots = jnp.arange(length)
            layer_caches = None
        else:
            index = cache["index"]
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], mask, (0, index))
            q_slots = index + jnp.arange(length)
            k_slots = jnp.arange(key_mask.shape[1])
            layer_caches = (cache["k"], cache["v"])
        causal = k_slots[None, :] <= q_slots[:, None]                       # [length, slots]
        attn_mask = causal[None] & key_mask[:, None, :]                     # [batch, length, slots]
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("Llama: segment_ids (packed sequences) are for training/scoring, "
                                 "not for decoding with a cache")
            attn_mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
        attn_mask = attn_mask[:, None]                                      # [batch, 1, length, slots]

        if cfg.scan_layers:
            x, layer_caches = self.layers(x, layer_caches, rope, attn_mask, index)
        else:
            new = []
            for i, blk in enumerate(self.blocks):
                lc = None if layer_caches is None else (layer_caches[0][i], layer_caches[1][i])
                x, lc = blk(x, lc, rope, attn_mask, index)
                new.append(lc)
            if layer_caches is not None:
                layer_caches = (jnp.stack([c[0] for c in new]), jnp.stack([c[1] for c in new]))
        x = self.final_norm(x)
        if cache is None:
            return x[:, :-1] if even_pad else x
        return x, {"k": layer_caches[0], "v": layer_caches[1], "mask": key_mask,
                   "index": index + length}

    def __call__(self, tokens=None, *, embeddings=None, positions, mask, cache=None, decode=False,
                 segment_ids=None):
        """logits [batch, length, vocab] float32, or ``(logits, new_cache)`` when ``decode``."""
        out = self.hidden_states(tokens, embeddings=embeddings, positions=positions, mask=mask,
                                 cache=cache, decode=decode, segment_ids=segment_ids)
        if decode:
            return self.logits(out[0]), out[1]
        return self.logits(out)


def init_params(config: LlamaConfig, rng, batch: int = 1, length: int = 8) -> Any:
    """Random parameters (``nn.Partitioned`` boxes carrying logical axis names)."""
    tokens = jnp.zeros((batch, length), jnp.int32)
    return Llama(config).init(rng, tokens, positions=jnp.zeros((batch, length), jnp.int32),
                              mask=jnp.ones((batch, length), bool))["params"]



def layer_flops(config: LlamaConfig, length: int) -> float:
    """Forward matmul FLOPs of one decoder layer over one sequence of ``length`` tokens.

    Projections: 2 x (q, k, v, o and the three SwiGLU weights) per token; attention: scores
    and the weighted sum, 2 x 2 x length x heads x head_dim per token (the full square, as
    ``dot_product_attention`` computes it under a causal mask). Elementwise work (norms,
    rotary, softmax) is left out: ~1% at d=256 and less beyond. A backward pass costs one
    such forward for activation gradients and one more for weight gradients.
    """
    hd = config.head_dim
    weights = config.dim * hd * (2 * config.n_heads + 2 * config.n_kv_heads) + 3 * config.dim * config.ffn_dim
    return float(length) * (2.0 * weights + 4.0 * length * config.n_heads * hd)


def scanned_flops_uncounted(config: LlamaConfig, length: int, rows: int, passes: float) -> float:
    """FLOPs that XLA's cost analysis misses when the layers are scanned: it counts a while
    loop's body once, so ``n_layers - 1`` layers go uncounted (0 when unrolled).

    ``passes`` = forward-equivalents per layer in the step: 1 forward-only, 2 forward +
    activation gradients (a frozen LLM), 3 forward + backward with weight gradients; add 1
    when ``remat_policy="full"`` recomputes the forward.
    """
    if not config.scan_layers:
        return 0.0
    return (config.n_layers - 1) * rows * passes * layer_flops(config, length)
