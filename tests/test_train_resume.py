"""Preemption and crashes: the real CLI (`python -m audiochat_jax.train`) in subprocesses.

A run killed with SIGKILL and restarted, and a run stopped with SIGTERM and restarted, must
produce exactly the loss curve of an uninterrupted run (same steps, same values): the
checkpoint carries params, optimizer state, RNG and the input position.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import numpy as np

from audiochat_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 40
ARGS = ["--config", os.path.join(REPO, "configs/smoke_toy.py"), f"--config.total_steps={TOTAL}",
        "--config.log_every=1", "--config.checkpoint.every_steps=5", "--config.toy.batch_delay_s=0.1"]


class _Run:
    """The CLI in a subprocess; a thread reads its stdout as it comes, so a signal can be
    sent at a known step even while this process is busy."""

    def __init__(self, workdir):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audiochat_jax.train", *ARGS, f"--workdir={workdir}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_step(self, step):
        """Blocks until the line of ``step`` is printed; returns all lines so far."""
        while (line := self.lines.get(timeout=300)) is not None:
            self.seen.append(line)
            if line.startswith(f"[train] step {step}:"):
                return self.seen
        raise AssertionError(f"run ended (rc={self.proc.wait()}) before step {step}:\n{''.join(self.seen)}")

    def finish(self):
        rc = self.proc.wait(timeout=300)
        while (line := self.lines.get(timeout=60)) is not None:
            self.seen.append(line)
        return rc, "".join(self.seen)


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
    run = _Run(workdir)
    want = _reference_losses(str(tmp_path / "reference"))  # while the subprocess starts up
    assert sorted(want) == list(range(1, TOTAL + 1))

    # SIGTERM mid-run: the current step is saved and the process exits 0.
    run.wait_for_step(8)
    run.proc.send_signal(signal.SIGTERM)
    rc, out = run.finish()
    assert rc == 0, out
    saved = int(re.search(r"preempted: saved step (\d+)", out).group(1))
    assert 8 <= saved < TOTAL - 10, out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))

    # The rerun resumes from it; SIGKILL it mid-run: only periodic checkpoints survive.
    run = _Run(workdir)
    lines = run.wait_for_step(saved + 8)
    assert any(f"checkpoints step {saved}" in line for line in lines), lines
    run.proc.kill()
    run.proc.wait()

    rc, out = _Run(workdir).finish()
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    assert saved < resumed < TOTAL and resumed % 5 == 0, out

    got = _losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
