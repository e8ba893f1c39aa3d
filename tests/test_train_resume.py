"""Preemption and crashes: the real CLI (`python -m audiochat_jax.train`) in subprocesses.

A run killed with SIGKILL and restarted, and a run stopped with SIGTERM and restarted, must
produce exactly the loss curve of an uninterrupted run (same steps, same values): the
checkpoint carries params, optimizer state, RNG and the input position.
"""
from __future__ import annotations

import os
import re
import signal

import numpy as np

from audiochat_jax.train import metrics
from gated_run import GatedRun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 40
ARGS = ["--config", os.path.join(REPO, "configs/smoke_toy.py"), f"--config.total_steps={TOTAL}",
        "--config.log_every=1", "--config.checkpoint.every_steps=5"]


def _losses(workdir):
    return metrics.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss")


def _reference_losses(workdir):
    """The uninterrupted run, in this process (same config file and overrides as the CLI)."""
    from absl import flags
    from ml_collections import config_flags

    from audiochat_jax.train import loop

    argv = ["prog", *ARGS]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert loop.train(fv.config, workdir)["status"] == "done"
    return _losses(workdir)


def test_sigterm_then_sigkill_then_resume_reproduce_the_uninterrupted_loss_curve(tmp_path):
    workdir = str(tmp_path / "run")
    run = GatedRun([*ARGS, f"--workdir={workdir}"], gate_at=(9,))
    want = _reference_losses(str(tmp_path / "reference"))  # while the subprocess starts up
    assert sorted(want) == list(range(1, TOTAL + 1))

    # SIGTERM while the run is parked before its 9th batch (steps 1-8 dispatched): the next
    # step boundary saves the current step and the process exits 0.
    run.wait_for("GATE 9")
    run.proc.send_signal(signal.SIGTERM)
    run.release()
    rc, out = run.finish()
    assert rc == 0, out
    saved = int(re.search(r"preempted: saved step (\d+)", out).group(1))
    assert saved in (8, 9), out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))

    # The rerun resumes from it; SIGKILL it parked 8 batches later: only the periodic
    # checkpoints (every 5 steps) survive.
    run = GatedRun([*ARGS, f"--workdir={workdir}"], gate_at=(9,))
    lines = run.wait_for("GATE 9")
    assert any(f"checkpoints step {saved}" in line for line in lines), lines
    run.proc.kill()
    run.proc.wait()

    rc, out = GatedRun([*ARGS, f"--workdir={workdir}"]).finish()
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    # steps saved + 1 .. saved + 8 ran; the periodic saves are asynchronous, so the kill may
    # have caught the latest one in flight: the one before it is then the newest complete.
    assert saved < resumed <= saved + 8 and resumed % 5 == 0, out
    got = _losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
