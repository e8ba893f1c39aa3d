"""The one place that names mesh axes.

Models carry *logical* axis names on every kernel (``nn.with_logical_partitioning``) and
on the activations they constrain (``nn.with_logical_constraint``). This module maps those
names onto the physical mesh ``('data', 'fsdp', 'tensor')`` through a single rules table.

Vocabulary (weights and activations are kept distinct, as in MaxText, so FSDP on weights
never shards an activation by accident):

weights
  ``vocab``      token-embedding rows / LM-head columns            -> tensor
  ``embed``      model width of a weight matrix                    -> fsdp
  ``mlp``        feed-forward hidden width                         -> tensor
  ``heads``      query heads                                       -> tensor
  ``kv_heads``   key/value heads (GQA)                             -> tensor
  ``kv``         per-head width                                    -> replicated
  ``layers``     stacked layer axis of scan-over-layers            -> replicated
  ``norm``       norm scales, biases (small: always replicated)    -> replicated
  ``conv_k``     convolution kernel taps                           -> replicated
  ``conv_in``    convolution input channels / mel bins             -> replicated
  ``conv_out``   convolution output channels of the audio stem     -> replicated
  ``ctc_vocab``  CTC output classes (small)                        -> replicated
activations
  ``batch``                                                        -> (data, fsdp)
  ``length``                                                       -> replicated
  ``act_embed``                                                    -> replicated
  ``act_mlp``, ``act_heads``, ``act_kv_heads``, ``act_vocab``      -> tensor
  ``act_kv``                                                       -> replicated

A weight whose logical name is not in the table is an error, never silently replicated.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # weights
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("norm", None),
    ("conv_k", None),
    ("conv_in", None),
    ("conv_out", None),
    ("ctc_vocab", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_kv", None),
    ("act_vocab", "tensor"),
)

_KNOWN = {name for name, _ in LOGICAL_AXIS_RULES}


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
    """A mesh over ``('data', 'fsdp', 'tensor')``.

    ``shape`` has three entries; one of them may be -1, meaning "all remaining devices"
    (MaxText's convention), so ``(-1, 1, 1)`` is pure data parallelism on any machine.
    Axis types are Auto: linen's logical constraints are GSPMD-style.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % rest:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // rest
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices but {len(devices)} are "
            f"available; set config.mesh_shape so its product is {len(devices)} (or use -1 for one axis)")
    return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _check_names(spec: P, where: str) -> None:
    for entry in spec:
        names = entry if isinstance(entry, tuple) else (entry,)
        for name in names:
            if name is not None and name not in _KNOWN:
                raise ValueError(
                    f"{where}: logical axis {name!r} has no rule in parallel/sharding.py "
                    f"LOGICAL_AXIS_RULES; add it there (known: {sorted(_KNOWN)})")


def logical_to_sharding(tree: Any, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """Shardings for a tree of ``nn.Partitioned`` boxes (or of logical ``PartitionSpec``s).

    Use on the output of ``jax.eval_shape(model.init, ...)``: boxed leaves carry their
    logical names. Unboxed leaves (no names) are replicated — only plain arrays such as
    step counters and RNG keys should be unboxed.
    """
    specs = nn.get_partition_spec(tree)
    flat, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    out = []
    for path, spec in flat:
        if not isinstance(spec, P):
            spec = P()
        _check_names(spec, jax.tree_util.keystr(path))
        out.append(nn.logical_to_mesh_sharding(spec, mesh, rules))
    return jax.tree_util.tree_unflatten(treedef, out)


def batch_spec(ndim: int = 1) -> P:
    """PartitionSpec of a ``[batch, ...]`` array: batch over (data, fsdp), rest replicated."""
    return nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), LOGICAL_AXIS_RULES)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` input array: batch over (data, fsdp), rest replicated."""
    return NamedSharding(mesh, batch_spec(ndim))


def batch_shards(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch axis is split on ``mesh`` (a global batch must be a multiple)."""
    spec = batch_spec(1)[0]
    return int(np.prod([mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else spec or ())]))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def axis_rules():
    """Context manager activating the rules table for ``nn.with_logical_constraint``."""
    return nn.logical_axis_rules(LOGICAL_AXIS_RULES)
