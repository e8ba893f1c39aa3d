"""How a product in the compute dtype is written, per backend; shared by the Llama and the
conformer.

On accelerators a bfloat16 dot takes bfloat16 inputs and gives a bfloat16 result (the matrix
units accumulate in float32 inside). Not ``preferred_element_type=float32`` then a cast:
the cast's transpose makes the backward's cotangent float32, and its dots then run in
float32 on the bfloat16 weights converted every step (an H100 7B align step at batch 16:
440 ms that way, 312 ms this way).

XLA:CPU is the other way round: it runs a dot with a bfloat16 result as a generic loop at
float32 speed or below, and one with a float32 result on its bfloat16 kernels (oneDNN /
AMX), 4-6x faster at the models' shapes (``python bench/cpu_limits.py`` prints both
forms), so there the float32 result is cast. A product with few rows (decoding: one token a
row) is a matrix-vector product, which XLA:CPU has no bfloat16 kernel for: it converts the
whole weight to float32 on every call (the LM head's 32000 x 1024 took 89 ms of a 617 ms
prefill), so on the CPU those run in float32 on the weights as stored.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

# Rows at or below which a CPU product with bfloat16 compute runs in float32 (see above).
SMALL_ROWS = 64


def float32_result_dots() -> bool:
    """Whether bfloat16 dots should produce float32, then be cast: on XLA:CPU (see above)."""
    return jax.default_backend() == "cpu"


def einsum(eq: str, x, w, dtype):
    """``jnp.einsum(eq, x, w)`` with inputs and result in ``dtype``, in this backend's fast
    form; a bfloat16 product accumulates in float32 and rounds once. ``x`` is the activation
    operand: its leading axes (all but the last) count as the product's rows."""
    if dtype == jnp.bfloat16 and float32_result_dots():
        if math.prod(x.shape[:-1]) <= SMALL_ROWS:
            return jnp.einsum(eq, x.astype(jnp.float32), w.astype(jnp.float32)).astype(dtype)
        return jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32).astype(dtype)
    return jnp.einsum(eq, x.astype(dtype), w.astype(dtype))


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """``lax.dot_general`` for Flax layers (``nn.Dense(..., dot_general=dot_general)``): a
    bfloat16 x bfloat16 product takes the float32-result form on the CPU (see above)."""
    if (preferred_element_type is None and lhs.dtype == rhs.dtype == jnp.bfloat16
            and float32_result_dots()):
        out = lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=jnp.float32, **kwargs)
        return out.astype(jnp.bfloat16)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
