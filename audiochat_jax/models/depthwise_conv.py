"""Depthwise N-D convolution as a sum of shifted, strided windows times the taps, with its
own gradient (``depthwise_taps``). The conformer's convolution module (1-D, 31 taps) and its
``dw_striding`` subsampling stem (2-D, stride 2) use it; ``DepthwiseConv`` has nn.Conv's
parameters, so checkpoints and conversions are unchanged.
"""
from __future__ import annotations

import functools
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


def _taps(xp: jax.Array, kernel: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    return sum(w * kernel[o] for o, w in _tap_windows(xp, kernel.shape[:-1], strides))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_taps(xp: jax.Array, kernel: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    """Depthwise conv, no padding added: ``sum_o window_o(xp) * kernel[o]``.

    xp [batch, *spatial, c] (already padded), kernel [*kernel_size, c] -> [batch, *spatial', c].

    Why a custom gradient: autodiff's input gradient is the transpose of each window's slice,
    a pad of ``g * kernel[o]`` to xp's full size, and XLA:CPU writes each of those padded
    arrays (31 per conv) before summing them. Here the input gradient is one more sum of
    windows (of ``g``, dilated by the stride and padded, times the flipped kernel), which XLA
    fuses into one loop, and a 1-D stride-1 conv's kernel gradient is one matmul
    (``_kernel_grad_1d``) instead of a reduction per tap.
    """
    return _taps(xp, kernel, strides)


def _depthwise_taps_fwd(xp, kernel, strides):
    return _taps(xp, kernel, strides), (xp, kernel)


def _depthwise_taps_bwd(strides, residuals, g):
    xp, kernel = residuals
    ks = kernel.shape[:-1]
    # Input gradient: dxp[i] = sum_o g[(i - o) / s] * kernel[o] where s divides i - o, i.e. a
    # stride-1 correlation of the flipped kernel with g dilated by s and padded by k - 1 (plus
    # the input positions past the last window, whose gradient is 0).
    n_out = g.shape[1:-1]
    config = [(0, 0, 0)] + [(k - 1, k - 1 + (size - (s * (n - 1) + k)), s - 1)
                            for size, k, s, n in zip(xp.shape[1:-1], ks, strides, n_out)] + [(0, 0, 0)]
    g_dilated = jax.lax.pad(g, jnp.zeros((), g.dtype), config)
    flipped = kernel[tuple(slice(None, None, -1) for _ in ks)]
    dxp = _taps(g_dilated, flipped, (1,) * len(ks))
    if strides == (1,):
        dkernel = _kernel_grad_1d(xp, g, ks[0])
    else:
        # Each tap's window of xp times g, summed over batch and positions in float32 (the
        # taps are bf16 on accelerators).
        reduce_axes = tuple(range(g.ndim - 1))
        dkernel = jnp.stack([jnp.sum(w * g, axis=reduce_axes, dtype=jnp.float32)
                             for _, w in _tap_windows(xp, ks, strides)])
    return dxp, dkernel.reshape(kernel.shape).astype(kernel.dtype)


def _kernel_grad_1d(xp: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """``dkernel[o, c] = sum_{b,t} xp[b, t + o, c] * g[b, t, c]`` as one batched matmul.

    xp [batch, time + k - 1, c], g [batch, time, c] -> [k, c] float32.

    Why not a sum per tap: the reduction reads each tap's window, and XLA:CPU wrote every
    window (31 per conv, each recomputing the GLU and mask that feed it) before reducing it:
    ~10 ms a layer in the mini step. Here time is cut into chunks of ``k - 1`` frames; the
    products of every frame of a chunk of ``g`` with every frame of the same chunk of ``xp``
    plus the next ``k - 1`` (``m[c, t, s]``, summed over batch and chunks: one matmul per
    channel) hold each tap's sum on a diagonal ``s = t + o``, which a pad and a reshape
    line up as columns.
    """
    b, t, c = g.shape
    tc = max(k - 1, 1)
    n = -(-t // tc)
    g = jnp.pad(g, ((0, 0), (0, n * tc - t), (0, 0))).reshape(b, n, tc, c)
    xr = jnp.pad(xp, ((0, 0), (0, (n + 1) * tc - xp.shape[1]), (0, 0))).reshape(b, n + 1, tc, c)
    xc = jnp.concatenate([xr[:, :n], xr[:, 1:, :k - 1]], axis=2)  # [b, n, tc + k - 1, c]
    m = jnp.einsum("bntc,bnsc->cts", g, xc, preferred_element_type=jnp.float32)
    s = tc + k - 1
    # m[c, t, t + o] sits at t * s + t + o of the flattened [tc, s]: rows of s + 1, column o.
    diagonals = jnp.pad(m.reshape(c, tc * s), ((0, 0), (0, tc))).reshape(c, tc, s + 1)[:, :, :k]
    return diagonals.sum(1).T


depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


class DepthwiseConv(nn.Module):
    """Depthwise N-D convolution written as a sum of shifted, strided slices times the taps
    (``depthwise_taps``, with its own gradient).

    Same parameters as ``nn.Conv(c, kernel_size, strides, padding, feature_group_count=c)``
    (kernel [*kernel_size, 1, c], bias [c]) and the same outputs. Why not nn.Conv:
    - XLA's SPMD partitioner computed a wrong kernel gradient for the grouped, strided conv
      when the batch is sharded (a (2,2,2) mesh gave a conv_2 kernel gradient as large as,
      and unrelated to, the single-device one); slices and products partition correctly.
    - XLA:CPU ran the grouped conv at ~0.6 GFLOP/s: the mini conformer's [16, 75, 144]
      depthwise conv (31 taps) took 19 ms forward and 18 ms for its input gradient, ~15% of
      the align step; as slices, forward + backward alone took 6.4 ms vs 41.7 ms.
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
