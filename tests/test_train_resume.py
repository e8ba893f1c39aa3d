"""Preemption and crashes: the real CLI (`python -m audiochat_jax.train`) in subprocesses.

A run killed with SIGKILL and restarted, and a run stopped with SIGTERM and restarted, must
produce exactly the loss curve of an uninterrupted run (same steps, same values): the
checkpoint carries params, optimizer state, RNG and the input position.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np

from audiochat_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 40
ARGS = ["--config", os.path.join(REPO, "configs/smoke_toy.py"), f"--config.total_steps={TOTAL}",
        "--config.log_every=1", "--config.checkpoint.every_steps=5", "--config.toy.batch_delay_s=0.05"]


def _start(workdir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "audiochat_jax.train", *ARGS, f"--workdir={workdir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _wait_for_step(proc, step):
    """Reads stdout until the line of ``step``; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"[train] step {step}:"):
            return lines
    raise AssertionError(f"run ended (rc={proc.wait()}) before step {step}:\n{''.join(lines)}")


def _finish(proc):
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _losses(workdir):
    return metrics.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss")


def test_sigkill_and_sigterm_resume_reproduce_the_uninterrupted_loss_curve(tmp_path):
    clean, killed, stopped = (str(tmp_path / n) for n in ("clean", "killed", "stopped"))
    reference = _start(clean)  # runs alongside the interrupted ones

    # SIGKILL mid-run: nothing is saved beyond the periodic checkpoints.
    proc = _start(killed)
    _wait_for_step(proc, 13)
    proc.kill()
    proc.wait()
    rc, out = _finish(_start(killed))
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    assert resumed in (5, 10, 15), out

    # SIGTERM mid-run: the current step is saved and the process exits 0.
    proc = _start(stopped)
    _wait_for_step(proc, 8)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 0, out
    saved = int(re.search(r"preempted: saved step (\d+)", out).group(1))
    assert 8 <= saved < TOTAL
    assert os.path.isdir(os.path.join(stopped, "checkpoints", str(saved)))
    rc, out = _finish(_start(stopped))
    assert rc == 0 and f"checkpoints step {saved}" in out, out

    rc, out = _finish(reference)
    assert rc == 0, out
    want = _losses(clean)
    assert sorted(want) == list(range(1, TOTAL + 1))
    for workdir in (killed, stopped):
        got = _losses(workdir)
        assert sorted(got) == sorted(want)
        np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
