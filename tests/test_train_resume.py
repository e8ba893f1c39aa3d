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


def _reference_losses(workdir):
    """The uninterrupted run, in this process (same config file and overrides as the CLI)."""
    from absl import flags
    from ml_collections import config_flags

    from audiochat_jax.train import loop

    argv = ["prog", *ARGS]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    with fv.config.unlocked():
        fv.config.toy.batch_delay_s = 0.0  # only the interrupted runs need time to be interrupted
    assert loop.train(fv.config, workdir)["status"] == "done"
    return _losses(workdir)


def test_sigterm_then_sigkill_then_resume_reproduce_the_uninterrupted_loss_curve(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _start(workdir)
    want = _reference_losses(str(tmp_path / "reference"))  # while the subprocess starts up
    assert sorted(want) == list(range(1, TOTAL + 1))

    # SIGTERM mid-run: the current step is saved and the process exits 0.
    _wait_for_step(proc, 8)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 0, out
    saved = int(re.search(r"preempted: saved step (\d+)", out).group(1))
    assert 8 <= saved < TOTAL - 10, out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))

    # The rerun resumes from it; SIGKILL it mid-run: only periodic checkpoints survive.
    proc = _start(workdir)
    lines = _wait_for_step(proc, saved + 8)
    assert any(f"checkpoints step {saved}" in line for line in lines), lines
    proc.kill()
    proc.wait()

    rc, out = _finish(_start(workdir))
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    assert saved < resumed < TOTAL and resumed % 5 == 0, out

    got = _losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
