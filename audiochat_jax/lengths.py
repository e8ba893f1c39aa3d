"""Integer division for ``[batch]`` length arrays, written so XLA:CPU's masks stay cheap.

Every mask of a padded batch (``iota < lengths``) is fused by XLA into the elementwise loop
that uses it, and the arithmetic that derived ``lengths`` from the audio lengths comes with
it: XLA:CPU recomputes that chain for every element of the loop. jnp's ``//`` on signed
integers is Python's floor division, about a dozen ops each (a truncating divide plus the
sign corrections), and the chain from samples to conformer frames to stacked embeddings has
four of them. In the mini align step the stem's padded, masked [16, 152, 42, 32] activations
took 7.2 ms to write with them and 1.2 ms without. Lengths are never negative, so one
truncating divide is the floor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def floor_div(lengths, divisor: int):
    """``lengths // divisor`` for ``lengths >= 0``: a Python int or numpy array as ``//``, a jax
    array as one truncating integer divide (its negatives count as 0)."""
    if isinstance(lengths, jax.Array):
        return jax.lax.div(jnp.maximum(lengths, 0), jnp.asarray(divisor, lengths.dtype))
    return lengths // divisor
