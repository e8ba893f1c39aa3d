"""A jax.profiler trace of a window of training steps.

The trainer traces ``config.profile.steps`` steps from ``config.profile.start_step`` into
``WORKDIR/profile``; open it with TensorBoard's profile plugin (XProf: op time by HLO op and
by framework op, memory, the trace viewer) or the ``*.trace.json.gz`` in ui.perfetto.dev.
The window is waited for on both sides (the loop does not otherwise wait for its steps), so
the trace holds exactly the traced steps' ops.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax


class StepTrace:
    """Traces steps ``[start_step, start_step + steps)`` (1-based, as logged) into ``out_dir``."""

    def __init__(self, out_dir: str, start_step: int, steps: int):
        self.out_dir, self.first, self.steps = out_dir, max(1, start_step), steps
        self.active = False

    def before(self, step: int, pending: Any = None) -> None:
        """Call before dispatching step ``step``; ``pending`` (outputs of steps still running)
        are waited for first."""
        if self.steps > 0 and step == self.first and not self.active:
            jax.block_until_ready(pending)
            os.makedirs(self.out_dir, exist_ok=True)
            # No Python tracer: it hooks every Python thread, and the trainer's threads
            # (async checkpointing, TensorBoard, tqdm) come and go while it is set.
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0
            jax.profiler.start_trace(self.out_dir, create_perfetto_trace=True, profiler_options=options)
            self.active, self.started = True, time.perf_counter()

    def after(self, step: int, outputs: Any = None) -> str | None:
        """Call after dispatching step ``step``; returns a line for the log when the window
        has just been written, else None."""
        if not self.active or step < self.first + self.steps - 1:
            return None
        jax.block_until_ready(outputs)
        wall_ms = (time.perf_counter() - self.started) * 1e3
        jax.profiler.stop_trace()
        self.active = False
        return (f"profile of steps {self.first}-{step} ({wall_ms / self.steps:.0f} ms a step while traced) in "
                f"{self.out_dir}: open with TensorBoard's profile plugin or ui.perfetto.dev")

    def close(self) -> None:
        if self.active:  # the run ended inside the window
            jax.profiler.stop_trace()
            self.active = False
