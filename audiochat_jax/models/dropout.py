"""Dropout that draws 16 random bits per element, four elements per hash.

``flax.linen.Dropout`` draws a 32-bit threefry word per element (``jax.random.bernoulli``).
Threefry is a hash of ~20 integer rounds per word, and on the 2-core CPU the mini conformer's
masks were ~11% of the align step's op time (docs/performance.md). Splitting each word into
two 16-bit halves halves the hashing: a [16, 75, 576] mask took 1.5-1.9 ms instead of
3.1-3.4 ms with ``jax.random.bernoulli`` (two runs each, in turn, another job on the CPU).
The drop probability becomes ``round(rate * 65536) / 65536`` (0.1 -> 0.100006), and kept
values are scaled by that probability's complement, so ``E[out] = x`` still holds.

The hash is ``jax.random.bits``' own Threefry-2x32 on the same counters, written out unrolled
(:func:`random_bits` equals ``jax.random.bits`` bit for bit): on CPU JAX lowers its hash as a
5-iteration while loop (``use_rolled_loops``), each iteration a pass over the whole counter
arrays, where the unrolled hash fuses into the mask's consumer: a [16, 75, 576] dropout (mask
and select) took 0.64 ms instead of 1.41-2.16 ms, and the mini align step 0.96-0.97x the time,
with the same masks (docs/performance.md, stop 23). Each hash gives two 32-bit words, which
``jax.random.bits`` XORs into one; the mask keeps both (:func:`random_word_pairs`), so one hash
serves four elements (docs/performance.md, stop 27).

Same interface and RNG stream name as ``nn.Dropout`` (``rngs={"dropout": key}``), with
``deterministic`` given at call time. [any shape] -> same shape.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_LEVELS = 1 << 16
# Threefry-2x32's rotation schedule and key-schedule parity (Salmon et al. 2011; jax.random's).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(k1, k2, x0, x1):
    """Threefry-2x32 with 20 rounds, as jax.random computes it, written out unrolled.
    Key words k1, k2 uint32 scalars; counters x0, x1 uint32 [*shape] -> two uint32 [*shape]."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = jax.lax.shift_left(x1, np.uint32(r)) | jax.lax.shift_right_logical(x1, np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _counter_hash(key: jax.Array, shape: tuple[int, ...]):
    """Both output words of Threefry-2x32 on each element's counter, as ``jax.random.bits``
    hashes them: the counter is the element's flat index (jax's partitionable scheme: built
    from per-axis iotas, so a batch-sharded draw is drawn sharded). None where
    ``jax.random.bits`` would not hash that way (other key types, the non-partitionable
    scheme, arrays of 2^32 elements or more). -> (uint32 [*shape], uint32 [*shape]) or None"""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if (not jax.config.jax_threefry_partitionable or math.prod(shape) >= 1 << 32
            or (typed and str(jax.random.key_impl(key)) != "threefry2x32")
            or (not typed and (key.shape != (2,) or jax.config.jax_default_prng_impl != "threefry2x32"))):
        return None
    words = jax.random.key_data(key) if typed else key
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return _threefry2x32(words[0], words[1], jnp.zeros(shape, jnp.uint32), index)


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, bit for bit, with the hash unrolled
    (:func:`_threefry2x32`) so that XLA fuses it into its consumer: jax keeps one word per
    element, the two output words XORed. Other key types, the non-partitionable scheme and
    arrays of 2^32 elements or more go to ``jax.random.bits`` itself. -> uint32 [*shape]"""
    hashed = _counter_hash(key, shape)
    if hashed is None:
        return jax.random.bits(key, shape, jnp.uint32)
    high, low = hashed
    return high ^ low


def random_word_pairs(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Two 32-bit words per element: both output words of the same unrolled Threefry-2x32
    hash of the element's counter (:func:`random_bits` XORs them into one), so 64 random bits
    cost one hash. Where :func:`random_bits` falls back to ``jax.random.bits``, so does this
    (two words drawn per element). -> uint32 [*shape, 2]"""
    hashed = _counter_hash(key, shape)
    if hashed is None:
        return jax.random.bits(key, (*shape, 2), jnp.uint32)
    return jnp.stack(hashed, axis=-1)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """``[*shape]`` bool, True with probability ``1 - round(rate * 65536) / 65536``, from one
    hash per 4 elements of the last axis: 64 bits, four 16-bit draws (:func:`random_word_pairs`;
    leading axes keep their shape, so a batch-sharded mask is drawn sharded)."""
    *lead, last = shape or (1,)
    groups = (last + 3) // 4
    pairs = random_word_pairs(key, (*lead, groups))
    quarters = jax.lax.bitcast_convert_type(pairs, jnp.uint16).reshape(*lead, 4 * groups)
    return (quarters[..., :last] >= jnp.uint16(round(rate * _LEVELS))).reshape(shape)


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
