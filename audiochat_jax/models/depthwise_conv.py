"""Depthwise N-D convolution as a sum of shifted, strided windows times the taps
(``depthwise_taps``). The conformer's convolution module (1-D, 31 taps) and its
``dw_striding`` subsampling stem (2-D, stride 2) use it; ``DepthwiseConv`` has nn.Conv's
parameters, so checkpoints and conversions are unchanged.
"""
from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _tap_windows(xp: jax.Array, kernel_size: tuple[int, ...], strides: tuple[int, ...]):
    """Yields ``(offset, window)`` for each tap: the inputs that tap ``offset`` multiplies,
    strided slices of the padded ``xp`` [batch, *spatial, c] -> [batch, *spatial', c]."""
    n_out = [(xp.shape[1 + i] - k) // s + 1 for i, (k, s) in enumerate(zip(kernel_size, strides))]
    for offset in itertools.product(*map(range, kernel_size)):
        yield offset, xp[(slice(None), *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, n_out)))]


def depthwise_taps(xp: jax.Array, kernel: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    """Depthwise conv, no padding added: ``sum_o window_o(xp) * kernel[o]``.
    xp [batch, *spatial, c] (already padded), kernel [*kernel_size, c] -> [batch, *spatial', c]."""
    return sum(w * kernel[o] for o, w in _tap_windows(xp, kernel.shape[:-1], strides))


class DepthwiseConv(nn.Module):
    """Depthwise N-D convolution written as a sum of shifted, strided slices times the taps
    (``depthwise_taps``).

    Same parameters as ``nn.Conv(c, kernel_size, strides, padding, feature_group_count=c)``
    (kernel [*kernel_size, 1, c], bias [c]) and the same outputs. Why not nn.Conv:
    - XLA's SPMD partitioner computed a wrong kernel gradient for the grouped, strided conv
      when the batch is sharded (a (2,2,2) mesh gave a conv_2 kernel gradient as large as,
      and unrelated to, the single-device one); slices and products partition correctly
      (tests/test_conformer.py).
    [batch, *spatial, c] -> [batch, *spatial', c].
    """
    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    kernel_axes: tuple[str | None, ...]     # logical names of the kernel's dims
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes)
        kernel = self.param("kernel", kernel_init, (*self.kernel_size, 1, self.features),
                            self.param_dtype).astype(self.dtype)
        x = jnp.pad(x.astype(self.dtype), ((0, 0), *self.padding, (0, 0)))
        y = depthwise_taps(x, kernel.reshape(*self.kernel_size, self.features), tuple(self.strides))
        if self.use_bias:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",))
            y = y + self.param("bias", bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y
