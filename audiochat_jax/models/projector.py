"""Projector: speech-encoder frames -> LLM-width embeddings (what the frozen LLM reads as audio).

    frames [batch, T, d_enc] --stack k--> [batch, ceil(T/k), k*d_enc] --linear | 2-layer MLP-->
    [batch, ceil(T/k), llm_dim] --optional RMS/LayerNorm--> audio embeddings

Stacking k consecutive frames is a stride-k, kernel-k convolution over time written as a
reshape (no im2col); with the conformer's 40 ms frames, k=2 gives the paper's 80 ms total
stride. The encoder zeroes frames past each length, and a stacked frame is real iff its
first sub-frame is, so ``out_lengths = ceil(lengths / k)``; embeddings past it are zeroed
(a bias or norm would otherwise give padding a non-zero value).

Logical axes: the stacked input axis is ``conv_in`` (taps x encoder channels, small and
replicated), the LLM width ``embed`` (sharded like the LLM's own embedding rows), the MLP
hidden ``mlp``; biases and norm scales ``norm`` (replicated).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from audiochat_jax.util.config_fields import DictConfig


KINDS = ("linear", "mlp")
NORMS = ("none", "rms", "layer")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig(DictConfig):
    """Projector hyper-parameters (plain JSON-able fields)."""
    in_dim: int                 # encoder width (ConformerConfig.d_model)
    out_dim: int                # LLM width (LlamaConfig.dim)
    stack: int = 2              # k consecutive frames per embedding
    kind: str = "mlp"           # "linear" | "mlp" (Linear -> GELU -> Linear)
    hidden_dim: int = 0         # MLP hidden width; 0 = out_dim
    norm: str = "none"          # "none" | "rms" | "layer", on the output
    norm_eps: float = 1e-5
    dtype: str = "float32"      # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"ProjectorConfig.{field}={getattr(self, field)!r}: {why}")
        for f in ("in_dim", "out_dim", "stack"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                bad(f, "must be a positive integer")
        if self.hidden_dim < 0:
            bad("hidden_dim", "must be >= 0 (0 = out_dim)")
        if self.kind not in KINDS:
            bad("kind", f"use one of {KINDS}")
        if self.norm not in NORMS:
            bad("norm", f"use one of {NORMS}")
        for f in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, f))
            except TypeError:
                bad(f, "not a dtype name; use e.g. 'float32' or 'bfloat16'")



def stacked_lengths(lengths, stack: int):
    """Embeddings per utterance after stacking: ``ceil(lengths / stack)`` (ints or arrays)."""
    return (lengths + stack - 1) // stack


def stack_frames(frames: jax.Array, stack: int) -> jax.Array:
    """[batch, T, d] -> [batch, ceil(T/stack), stack*d]; T is zero-padded to a multiple."""
    b, t, d = frames.shape
    pad = -t % stack
    if pad:
        frames = jnp.pad(frames, ((0, 0), (0, pad), (0, 0)))
    return frames.reshape(b, (t + pad) // stack, stack * d)


class Projector(nn.Module):
    """frames [batch, T, in_dim], lengths [batch] -> (embeddings [batch, ceil(T/k), out_dim],
    out_lengths [batch] int32); embeddings past ``out_lengths`` are zero."""
    config: ProjectorConfig

    @nn.compact
    def __call__(self, frames: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if frames.ndim != 3 or frames.shape[-1] != cfg.in_dim:
            raise ValueError(f"Projector: frames have shape {frames.shape}, expected [batch, T, "
                             f"in_dim={cfg.in_dim}]; ProjectorConfig.in_dim must equal the encoder width")
        dt = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        kernel = lambda names: nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
        bias = lambda names: nn.with_logical_partitioning(nn.initializers.zeros_init(), names)
        x = stack_frames(frames, cfg.stack)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        out_lengths = stacked_lengths(lengths.astype(jnp.int32), cfg.stack)
        if cfg.kind == "linear":
            x = nn.Dense(cfg.out_dim, name="linear", kernel_init=kernel(("conv_in", "embed")),
                         bias_init=bias(("norm",)), **dt)(x)
        else:
            hidden = cfg.hidden_dim or cfg.out_dim
            x = nn.Dense(hidden, name="fc1", kernel_init=kernel(("conv_in", "mlp")),
                         bias_init=bias(("norm",)), **dt)(x)
            x = nn.with_logical_constraint(nn.gelu(x), ("batch", "length", "act_mlp"))
            x = nn.Dense(cfg.out_dim, name="fc2", kernel_init=kernel(("mlp", "embed")),
                         bias_init=bias(("norm",)), **dt)(x)
        scale = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        if cfg.norm == "rms":
            x = nn.RMSNorm(epsilon=cfg.norm_eps, scale_init=scale, name="norm", **dt)(x)
        elif cfg.norm == "layer":
            x = nn.LayerNorm(epsilon=cfg.norm_eps, scale_init=scale, bias_init=bias(("norm",)),
                             name="norm", **dt)(x)
        valid = jnp.arange(x.shape[1])[None, :] < out_lengths[:, None]
        x = jnp.where(valid[..., None], x, 0).astype(x.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), out_lengths
