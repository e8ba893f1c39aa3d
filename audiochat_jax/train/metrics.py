"""Training metrics: a tqdm progress bar, one line per log interval, TensorBoard scalars.

The step returns a dict of scalar device arrays. They are summed *on device* every step
(no host sync, so dispatch stays ahead of compute) and fetched once per ``log_every``
steps, where means over the interval are written. Keys ending in ``_sum`` are totals
(e.g. ``tokens_sum``), everything else is averaged. Derived values: ``step_time`` (s,
wall clock per step over the interval), ``tokens_per_s`` (when the task reports
``tokens_sum``), ``mfu`` (when FLOPs per step and the hardware's peak FLOP/s are known).

Only process 0 writes (stdout and ``WORKDIR/tensorboard``); every process may call.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import numpy as np
import tqdm


def log(message: str) -> None:
    """A line on stdout from process 0 that does not break an active progress bar."""
    if jax.process_index() == 0:
        tqdm.tqdm.write(message)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


class _EventWriter:
    """TensorBoard scalars through TF's own summary op.

    ``tf.summary.scalar`` (and flax's SummaryWriter) need the ``tensorboard`` package, which
    only viewing requires; the event format is TF's. A scalar is a float32 tensor summary
    tagged for the "scalars" plugin — exactly what ``tf.summary.scalar`` writes.
    """

    def __init__(self, logdir: str):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=self._metadata)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Progress bar + text log + TensorBoard event files.

    flops_per_step: FLOPs of one train step summed over all devices (0: unknown, no MFU).
    peak_flops:     peak FLOP/s of one device (config.peak_flops; 0: no MFU).
    """

    def __init__(self, logdir: str, total_steps: int, start_step: int, log_every: int,
                 flops_per_step: float = 0.0, peak_flops: float = 0.0):
        self.primary = jax.process_index() == 0
        self.log_every = max(1, int(log_every))
        self.flops_per_step = float(flops_per_step)
        self.peak_total = float(peak_flops) * jax.device_count()
        self._sum: dict[str, Any] | None = None
        self._count = 0
        self._t0 = time.perf_counter()
        self._excluded = 0.0
        self._tb = _EventWriter(logdir) if self.primary else None
        self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not self.primary,
                              dynamic_ncols=True, mininterval=1.0, desc="train")

    def restart_clock(self) -> None:
        """Call after compilation so the first interval's step_time measures steps only."""
        self._t0, self._excluded = time.perf_counter(), 0.0

    def exclude(self, seconds: float) -> None:
        """Time spent inside the interval on something else (eval, a new bucket's compile)."""
        self._excluded += seconds

    def step(self, step: int, metrics: Mapping[str, jax.Array], force: bool = False) -> dict | None:
        """Records the metrics of completed step ``step``; logs at interval ends (or ``force``)."""
        self._sum = dict(metrics) if self._sum is None else jax.tree.map(
            lambda a, b: a + b, self._sum, dict(metrics))
        self._count += 1
        self._bar.update(1)
        if not (force or step % self.log_every == 0):
            return None
        host = {k: float(np.asarray(v)) for k, v in jax.device_get(self._sum).items()}
        elapsed = time.perf_counter() - self._t0 - self._excluded
        out = {k[:-4] if k.endswith("_sum") else k: (v if k.endswith("_sum") else v / self._count)
               for k, v in host.items()}
        out["step_time"] = elapsed / self._count
        if "tokens" in out:
            out["tokens_per_s"] = out["tokens"] / max(elapsed, 1e-9)
        if self.flops_per_step and self.peak_total:
            out["mfu"] = self.flops_per_step / out["step_time"] / self.peak_total
        self._sum, self._count = None, 0
        self.restart_clock()
        self.write(step, out, prefix="train")
        return out

    def write(self, step: int, scalars: Mapping[str, float], prefix: str) -> None:
        """One text line + TensorBoard scalars ``{prefix}/{name}`` for ``step``."""
        if not self.primary:
            return
        line = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(scalars.items()))
        self._bar.write(f"[{prefix}] step {step}: {line}")
        if "loss" in scalars:
            self._bar.set_postfix(loss=_fmt(scalars["loss"]), refresh=False)
        self._tb.scalars(step, {f"{prefix}/{k}": v for k, v in scalars.items()})

    def close(self) -> None:
        self._bar.close()
        if self._tb is not None:
            self._tb.close()


def read_scalars(logdir: str, tag: str) -> dict[int, float]:
    """``{step: value}`` of scalar ``tag`` (e.g. ``"train/loss"``) from the event files in
    ``logdir``. Files are read oldest first, so when a run was resumed the resumed run's
    values replace the interrupted one's for the steps it recomputed. (For reports/tests.)"""
    import glob
    import os

    import tensorflow as tf

    out: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")), key=os.path.getmtime):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor))
    return out
