"""Checkpoints: orbax CheckpointManager with two named items, plus preemption handling.

A checkpoint step directory holds

    state/   the TrainState (params, optimizer state, RNG, counters) — ``StandardSave``
    data/    the training iterator's position, ``iterator.get_state()`` — ``JsonSave``

so a restart continues from the exact example where the run stopped. Saves are async
(arrays are copied to host before ``save`` returns, then written in the background, so the
donated step can run on) and atomic (orbax writes to a temporary directory and renames it
when complete: a crash mid-save leaves the previous checkpoint as the latest). Restore
takes abstract ``jax.ShapeDtypeStruct`` leaves carrying the *current* mesh's shardings, so
a run may resume on a different mesh shape.

Multi-host: every process calls save/restore (orbax coordinates); only the primary writes
the JSON item, so iterators must be position-deterministic (the same state on every host,
as an index-based iterator is).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from audiochat_jax.models import model_dir

STATE, DATA = "state", "data"


class Checkpointer:
    """``CheckpointManager`` for ``{state, data}`` under ``directory``.

    every_steps: periodic save interval (a save at other steps needs ``force=True``).
    keep:        number of most recent checkpoints kept.
    """

    def __init__(self, directory: str, every_steps: int, keep: int, async_save: bool = True):
        if every_steps <= 0 or keep <= 0:
            raise ValueError(f"config.checkpoint.every_steps={every_steps} and .keep={keep} must "
                             "both be positive")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(directory, options=options, item_names=(STATE, DATA))
        self.directory = directory

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Saves if ``step`` is on the interval (or ``force``); returns whether it did."""
        return self.manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state)}), force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """``(state, data_state)`` of ``step``; arrays land on ``abstract_state``'s shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
        return out[STATE], out[DATA]

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_state(directory: str, step: int | None, abstract_state: Any) -> tuple[Any, dict, int]:
    """Reads a checkpoint of another run (``config.resume_from``): ``(state, data_state, step)``.

    ``step=None`` takes the latest. Raises naming ``directory`` when it holds none.
    """
    manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA))
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(
            f"config.resume_from={directory!r} holds no checkpoint"
            f"{'' if step is None else f' for step {step}'} (steps there: {manager.all_steps()}); "
            "point it at a run's checkpoint directory (WORKDIR/checkpoints)")
    out = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
    manager.close()
    return out[STATE], out[DATA], step


def load_init_variables(path: str, abstract_state) -> dict:
    """``{"params": ..., ["model_state": ...]}`` from a model directory, restored onto the
    state's shardings. The directory holds bare params (Llama) or a variables dict with a
    ``params`` collection (conformer: params + batch_stats); both are accepted."""
    model_dir.read_model_config(path)  # a clear error if it is not a model directory
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(os.path.join(os.path.abspath(path), model_dir.PARAMS_DIR)).item_metadata
    as_variables = "params" in saved.keys()
    abstract = abstract_state.variables if as_variables else abstract_state.params
    if as_variables:
        abstract = {k: v for k, v in abstract.items() if k in saved.keys()}
    try:
        _, tree = model_dir.load_model_dir(path, None, abstract)
    except (ValueError, KeyError) as e:
        raise ValueError(f"config.init_from={path!r}: its parameters do not match this task's model "
                         f"(check the model config against the directory's config.json): {e}") from e
    if not as_variables:
        return {"params": tree}
    out = {"params": tree.pop("params")}
    if tree:
        out["model_state"] = {**abstract_state.model_state, **tree}
    return out


class PreemptionWatch:
    """Answers "should we save and stop now?" once per step.

    Single process: a SIGTERM (what schedulers and Cloud TPU send before preemption) sets a
    flag that the loop reads between steps, so the step in flight finishes and the state
    is consistent. Multi-host: JAX's preemption sync manager (active after
    ``jax.distributed.initialize``) picks one step at which *every* host stops together;
    a local flag would let hosts disagree and deadlock in the collective save.
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self._manager = manager
        self._flag = threading.Event()
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
        self._flag.set()

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self._manager.reached_preemption(step)
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
