"""Unrolled <-> scanned layer parameters: ``layers_0 ... layers_{n-1}`` <-> ``layers`` [n, ...].

A model that scans its blocks (``nn.scan``, one compiled block instead of n) keeps each
parameter of all blocks in one array with a leading [n_layers] axis under ``layers``; an
unrolled model keeps ``layers_{i}`` subtrees. These two functions convert between the layouts
for plain arrays and for ``nn.Partitioned`` boxes (whose logical axis names gain or lose the
leading ``"layers"`` axis, as ``nn.scan(..., metadata_params={nn.PARTITION_NAME: "layers"})``
names it). The Llama checkpoint converter writes the stacked layout directly; the conformer
stacks on the fly (models/conformer.py) so its stored layout never changes.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_AXIS = "layers"  # the stacked axis's logical name (parallel/sharding.py maps it to no mesh axis)
_UNROLLED = re.compile(r"layers_(\d+)")


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def layer_keys(tree: dict) -> list[str]:
    """The ``layers_{i}`` keys of ``tree``, in layer order; raises if they are not 0..n-1."""
    keys = sorted((k for k in tree if _UNROLLED.fullmatch(k)), key=lambda k: int(k[len("layers_"):]))
    if [int(k[len("layers_"):]) for k in keys] != list(range(len(keys))):
        raise ValueError(f"layer parameters {keys} are not layers_0 ... layers_{len(keys) - 1}")
    return keys


def stack_layers(tree: dict) -> dict:
    """``{"layers_0": t0, ..., "layers_{n-1}": t, **rest}`` -> ``{"layers": T, **rest}`` where
    every leaf of T is the n layers' leaves stacked on a new leading axis. A tree without
    ``layers_{i}`` keys comes back unchanged."""
    keys = layer_keys(tree)
    if not keys:
        return dict(tree)
    if LAYER_AXIS in tree:
        raise ValueError(f"both {LAYER_AXIS!r} and {keys[0]!r} ... in one tree: mixed layouts")

    def stack(*xs):
        if _is_box(xs[0]):
            return xs[0].replace(value=jnp.stack([x.value for x in xs]), names=(LAYER_AXIS,) + tuple(xs[0].names))
        return jnp.stack(xs)

    out = {k: v for k, v in tree.items() if k not in keys}
    out[LAYER_AXIS] = jax.tree.map(stack, *[tree[k] for k in keys], is_leaf=_is_box)
    return out


def unstack_layers(tree: dict) -> dict:
    """Inverse of :func:`stack_layers`; a tree without ``layers`` comes back unchanged."""
    if LAYER_AXIS not in tree:
        return dict(tree)
    stacked = tree[LAYER_AXIS]
    first = jax.tree.leaves(stacked, is_leaf=_is_box)[0]
    n = (first.value if _is_box(first) else first).shape[0]

    def take(x, i):
        if _is_box(x):
            return x.replace(value=x.value[i], names=tuple(x.names)[1:])
        return x[i]

    out = {k: v for k, v in tree.items() if k != LAYER_AXIS}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: take(x, i), stacked, is_leaf=_is_box)
    return out
