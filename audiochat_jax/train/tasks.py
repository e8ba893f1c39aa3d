"""The task registry: what a task gives the shared loop (loop.py), and how it is found.

A task turns ``(config, mesh)`` into a :class:`Task` — the model's init and loss, the
training input, and optionally an eval hook, an exporter and frozen inputs. Everything
else (mesh, sharded init, the jitted donated step, checkpoints, metrics, preemption) is the
loop's. ``config.task`` names the task; built-in tasks live in their own modules and are
imported on first use, so ``lm`` does not import the conformer nor ``ctc`` the Llama.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np

from audiochat_jax.parallel import sharding

Batch = Mapping[str, np.ndarray]


class DataIterator(Protocol):
    """Host-local training input (the data/input.py contract).

    ``__next__`` returns numpy arrays ``[host_batch, ...]`` (fixed shapes from a small bucket
    set); ``get_state``/``set_state`` save and restore the exact position (JSON-able).
    Non-numeric arrays (e.g. string ``ids``) stay on the host: the step never sees them.
    """

    def __next__(self) -> Batch: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class Task:
    """What one task supplies.

    init:       ``rng -> variables``, what ``model.init`` returns: ``{"params": ...}`` plus any
                other collections (``"batch_stats"``); params boxed by
                ``nn.with_logical_partitioning`` (the loop derives shardings from the names,
                then unboxes). Only ``params`` are trained by gradient.
    loss:       ``(variables, frozen, batch, rng) -> (loss, aux)``, traced inside the jitted
                step: ``loss`` a float32 scalar mean, ``aux`` a dict of float32 scalars (means,
                e.g. ``accuracy``; keys ending ``_sum`` are totals, e.g. ``tokens_sum``, which
                also weights microbatches under gradient accumulation so the mean stays
                exact) plus, when the forward pass updates collections, ``aux["model_state"]``
                = the new non-param collections (``apply(..., mutable=["batch_stats"])``).
    train_data: ``() -> DataIterator`` yielding this host's share of ``config.batch_size``.
    evaluate:   ``(variables, frozen) -> {name: float}``, run on the host every
                ``config.eval_every`` steps and at the end (it may jit its own functions).
    export:     ``(variables, out_dir) -> None`` writes a model directory (model_dir.py) at the end.
    frozen:     a tree of sharded arrays passed to every step and eval, never updated or
                differentiated (the LLM during alignment); ``None`` when there are none.
    flops_per_step: analytic FLOPs of one step over all devices (0: count the compiled
                step's matmuls, ``flop_count.matmul_flops``).
    uncounted_flops: ``batch -> float``, matmul FLOPs of one step over all devices that a
                count of the step's HLO misses for a batch of these shapes (a scanned layer
                stack's body is counted once: ``llama.scanned_flops_uncounted``); added to
                that count for MFU.
    frozen_patterns: regexes over parameter paths, added to ``config.optimizer.frozen_patterns``
                (no update, no Adam moments, no weight decay): parts of the trained tree the
                task's own config freezes (alignment's ``trainable="projector"``).
    """

    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, dict]]
    train_data: Callable[[], DataIterator]
    evaluate: Callable[[Any, Any], dict] | None = None
    export: Callable[[Any, str], None] | None = None
    frozen: Any = None
    flops_per_step: float = 0.0
    uncounted_flops: Callable[[Batch], float] | None = None
    frozen_patterns: tuple[str, ...] = ()


def device_batch(batch: Batch, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global ``jax.Array``s sharded over the mesh's batch axes.

    Each host passes its own rows; ``[host_batch, ...]`` becomes ``[global_batch, ...]``.
    Non-numeric entries (string ids) are left out.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(
                sharding.batch_sharding(mesh, value.ndim), value)
    return out


TaskFactory = Callable[[Any, jax.sharding.Mesh], Task]

# Built-in tasks: name -> module that registers it when imported.
_BUILTIN = {
    "toy": "audiochat_jax.train.toy",
    "lm": "audiochat_jax.train.lm",
    "ctc": "audiochat_jax.train.ctc",
    "align": "audiochat_jax.train.align",
}
_REGISTRY: dict[str, TaskFactory] = {}


def register(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: ``@register("lm") def lm_task(config, mesh) -> Task``."""

    def wrap(factory: TaskFactory) -> TaskFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_task(name: str) -> TaskFactory:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN))
        raise ValueError(f"config.task={name!r} is not a registered task; known tasks: {known} "
                         "(register new ones with audiochat_jax.train.tasks.register)")
    return _REGISTRY[name]
