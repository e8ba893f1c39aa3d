"""The align task through the real CLI: SIGKILL mid-run, restart, and the loss curve equals an
uninterrupted run's (same steps, same values); the run exports a speech_llm directory."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading

import numpy as np

from align_fixtures import REPO, align_config, make_world, world_flags
from audiochat_jax import model_dir
from audiochat_jax.train import loop, metrics

TOTAL, EVERY = 12, 4
OVERRIDES = [f"--config.total_steps={TOTAL}", f"--config.checkpoint.every_steps={EVERY}",
             "--config.optimizer.warmup_steps=2", "--config.align.eval_splits=()",
             "--config.mesh_shape=(4,1,2)"]  # 8 fake devices; batch 4 over data=4, tensor=2
# The CLI with each input batch delayed 0.3 s, so a signal lands mid-run (the step itself
# takes milliseconds here).
SLOW_CLI = ("import sys, time\n"
            "from audiochat_jax.data import input as I\n"
            "nxt = I.SpeechInput.__next__\n"
            "I.SpeechInput.__next__ = lambda self: (time.sleep(0.3), nxt(self))[1]\n"
            "from absl import app\n"
            "from audiochat_jax.train.__main__ import main\n"
            "app.run(main)\n")


class _Run:
    def __init__(self, world, workdir):
        args = [f"--config={os.path.join(REPO, 'configs/align_mini_smoke.py')}", *world_flags(world),
                *OVERRIDES, f"--workdir={workdir}"]
        self.proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], cwd=REPO,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_step(self, step):
        while (line := self.lines.get(timeout=900)) is not None:
            self.seen.append(line)
            if line.startswith(f"[train] step {step}:"):
                return
        raise AssertionError(f"run ended (rc={self.proc.wait()}) before step {step}:\n{''.join(self.seen)}")

    def finish(self):
        rc = self.proc.wait(timeout=900)
        while (line := self.lines.get(timeout=60)) is not None:
            self.seen.append(line)
        return rc, "".join(self.seen)


def test_sigkill_then_restart_reproduces_the_uninterrupted_loss_curve(tmp_path):
    world = make_world(tmp_path / "world")
    workdir = str(tmp_path / "run")
    # The uninterrupted reference, in this process, first: run alongside, its compile let the
    # subprocess finish before the kill (observed on a loaded machine).
    reference = str(tmp_path / "reference")
    assert loop.train(align_config(world, *OVERRIDES), reference)["status"] == "done"
    want = metrics.read_scalars(os.path.join(reference, "tensorboard"), "train/loss")
    assert sorted(want) == list(range(1, TOTAL + 1))
    run = _Run(world, workdir)

    run.wait_for_step(EVERY + 2)  # past the first periodic checkpoint
    run.proc.kill()
    run.proc.wait()
    rc, out = _Run(world, workdir).finish()
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    assert 0 < resumed < TOTAL and resumed % EVERY == 0, out
    got = metrics.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss")
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
    # The exported model directory.
    meta = model_dir.read_model_config(os.path.join(workdir, "model"), "speech_llm")
    assert meta["config"]["projector"]["out_dim"] == 32 and meta["llm_dir"] == world["llm"]
