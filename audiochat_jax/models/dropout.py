"""Dropout that draws 16 random bits per element instead of 32.

``flax.linen.Dropout`` draws a 32-bit threefry word per element (``jax.random.bernoulli``).
Threefry is a hash of ~20 integer rounds per word, and on the 2-core CPU the mini conformer's
masks were ~11% of the align step's op time (docs/performance.md). Splitting each word into
two 16-bit halves halves the hashing: a [16, 75, 576] mask took 1.5-1.9 ms instead of
3.1-3.4 ms with ``jax.random.bernoulli`` (two runs each, in turn, another job on the CPU).
The drop probability becomes ``round(rate * 65536) / 65536`` (0.1 -> 0.100006), and kept
values are scaled by that probability's complement, so ``E[out] = x`` still holds.

Same interface and RNG stream name as ``nn.Dropout`` (``rngs={"dropout": key}``), with
``deterministic`` given at call time. [any shape] -> same shape.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 1 << 16


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """``[*shape]`` bool, True with probability ``1 - round(rate * 65536) / 65536``, from
    ``ceil(last / 2)`` 32-bit words per row of the last axis (leading axes keep their shape,
    so a batch-sharded mask is drawn sharded)."""
    *lead, last = shape or (1,)
    words = jax.random.bits(key, (*lead, (last + 1) // 2), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, 2 * ((last + 1) // 2))
    return (halves[..., :last] >= jnp.uint16(round(rate * _LEVELS))).reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability ``rate`` (quantised to 1/65536)
    and scale the rest by ``1 / keep``; the identity when ``deterministic`` or ``rate == 0``,
    all zeros at ``rate == 1`` (as ``nn.Dropout``)."""
    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1], got {self.rate}")
        if deterministic or self.rate == 0.0:
            return x
        drop = round(self.rate * _LEVELS)
        if drop == 0:
            return x
        if drop == _LEVELS:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng(self.rng_collection), self.rate, x.shape)
        scale = jnp.asarray(_LEVELS / (_LEVELS - drop), x.dtype)
        return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
