"""The train state: everything that changes during training, as one pytree.

``TrainState`` holds only what the optimizer updates (and the counters around it); frozen
parameters — the LLM during alignment — are *not* part of it. They are a separate, sharded
input of the step (``step(state, frozen, batch)``): no optimizer state, no gradients, no
copy in the checkpoint (they are read back from their own model directory).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """One training run's mutable state (a pytree; checkpointed as a whole).

    step:             int32 []  number of completed steps (skipped non-finite steps count).
    params:           trainable parameters (plain arrays, unboxed, sharded).
    model_state:      the model's other variable collections, updated by the forward pass
                      rather than by gradients (e.g. ``{"batch_stats": ...}``); ``{}`` if none.
    opt_state:        optax state for ``params``.
    rng:              PRNG key; the step uses ``fold_in(rng, step)`` so a resumed run draws
                      exactly the random numbers the uninterrupted one would.
    nonfinite_streak: int32 []  consecutive steps whose loss or gradients were not finite.
    nonfinite_total:  int32 []  all such steps of the run (their updates were skipped).
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array

    @classmethod
    def create(cls, params: Any, model_state: Any, opt_state: Any, rng: jax.Array) -> "TrainState":
        zero = jnp.zeros((), jnp.int32)
        return cls(step=zero, params=params, model_state=model_state, opt_state=opt_state, rng=rng,
                   nonfinite_streak=zero, nonfinite_total=zero)

    @property
    def variables(self) -> dict:
        """``{"params": ..., **model_state}``: what ``model.apply`` and the exporters take."""
        return {"params": self.params, **self.model_state}
