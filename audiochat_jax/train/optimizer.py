"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, trainable masks.

Gradient accumulation is done *inside the step* (``loop.make_train_step`` scans over
microbatches and applies one update), not with ``optax.MultiSteps``: the step counter then
equals the number of optimizer updates, the schedule, checkpoints and data position all
advance together, the non-finite check sees the whole accumulated gradient, and no
params-sized accumulator lives in the optimizer state (and in every checkpoint).

Two masks, both from parameter paths (``jax.tree_util.keystr``, e.g.
``"['encoder']['block_0']['ff']['kernel']"``):

* weight decay applies to matrices only (``ndim >= 2``): norm scales and biases are not
  decayed (the usual AdamW practice);
* ``config.frozen_patterns``: regexes; a matching parameter gets no update
  (``optax.set_to_zero``) and no Adam moments. Large frozen models (the LLM) do not belong
  here — pass them to the step as frozen inputs (state.py) so no gradient is computed.

Config fields (``config.optimizer``): learning_rate, warmup_steps, end_lr_ratio, b1, b2,
eps, weight_decay, clip_norm, frozen_patterns; ``config.total_steps`` sets the decay length.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax


def lr_schedule(config) -> optax.Schedule:
    """Linear warmup 0 -> learning_rate over warmup_steps, then cosine to end_lr_ratio * lr."""
    opt = config.optimizer
    total = int(config.total_steps)
    warmup = int(opt.warmup_steps)
    if not 0 <= warmup < total:
        raise ValueError(f"config.optimizer.warmup_steps={warmup} must be in [0, config.total_steps="
                         f"{total}); lower warmup_steps or raise total_steps")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(opt.learning_rate), warmup_steps=warmup,
        decay_steps=total, end_value=float(opt.learning_rate) * float(opt.end_lr_ratio))


def _path_labels(params: Any, frozen_patterns: Sequence[str]) -> Any:
    regexes = [re.compile(p) for p in frozen_patterns]

    def label(path, _):
        name = jax.tree_util.keystr(path)
        return "frozen" if any(r.search(name) for r in regexes) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config, frozen_patterns: Sequence[str] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` for ``config`` (see the module docstring for the fields).

    ``frozen_patterns`` replaces ``config.optimizer.frozen_patterns`` when given (the loop
    passes the config's plus the task's own, ``Task.frozen_patterns``).

    ``tx.init`` accepts boxed (``nn.Partitioned``) params too, so the trainer can derive the
    optimizer state's shardings from the parameters' logical axis names.
    """
    opt = config.optimizer
    schedule = lr_schedule(config)
    tx = optax.chain(
        optax.clip_by_global_norm(float(opt.clip_norm)) if opt.clip_norm else optax.identity(),
        optax.adamw(schedule, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                    weight_decay=float(opt.weight_decay), mask=_decay_mask),
    )
    patterns = tuple(opt.frozen_patterns or ()) if frozen_patterns is None else tuple(frozen_patterns)
    if patterns:
        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                                   lambda p: _path_labels(p, patterns))
    return tx, schedule


def trainable_fraction(params: Any, frozen_patterns: Sequence[str]) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts under ``frozen_patterns`` (for the run log)."""
    labels = jax.tree.leaves(_path_labels(params, tuple(frozen_patterns or ())))
    sizes = [x.size for x in jax.tree.leaves(params)]
    return sum(s for s, l in zip(sizes, labels) if l == "trainable"), sum(sizes)

