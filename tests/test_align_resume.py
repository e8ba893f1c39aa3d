"""The align task through the real CLI: SIGKILL mid-run, restart, and the loss curve equals an
uninterrupted run's (same steps, same values); the run exports a speech_llm directory."""
from __future__ import annotations

import os
import re

import numpy as np

from align_fixtures import REPO, align_config, make_world, world_flags
from gated_run import GatedRun
from audiochat_jax.models import model_dir
from audiochat_jax.train import loop, metrics

TOTAL, EVERY = 12, 4
OVERRIDES = [f"--config.total_steps={TOTAL}", f"--config.checkpoint.every_steps={EVERY}",
             "--config.optimizer.warmup_steps=2", "--config.align.eval_splits=()",
             "--config.mesh_shape=(4,1,2)"]  # 8 fake devices; batch 4 over data=4, tensor=2


def _run(world, workdir, gate_at=()):
    args = [f"--config={os.path.join(REPO, 'configs/align_mini_smoke.py')}", *world_flags(world),
            *OVERRIDES, f"--workdir={workdir}"]
    return GatedRun(args, gate_at=gate_at)


def test_sigkill_then_restart_reproduces_the_uninterrupted_loss_curve(tmp_path):
    world = make_world(tmp_path / "world")
    workdir = str(tmp_path / "run")
    # The uninterrupted reference, in this process, first: run alongside, its compile let the
    # subprocess finish before the kill (observed on a loaded machine).
    reference = str(tmp_path / "reference")
    assert loop.train(align_config(world, *OVERRIDES), reference)["status"] == "done"
    want = metrics.read_scalars(os.path.join(reference, "tensorboard"), "train/loss")
    assert sorted(want) == list(range(1, TOTAL + 1))
    run = _run(world, workdir, gate_at=(EVERY + 3,))
    run.wait_for(f"GATE {EVERY + 3}")  # parked with steps 1..EVERY + 2 dispatched: past a checkpoint
    run.proc.kill()
    run.proc.wait()
    rc, out = _run(world, workdir).finish()
    assert rc == 0, out
    resumed = int(re.search(r"resumed from .*checkpoints step (\d+)", out).group(1))
    assert 0 < resumed < TOTAL and resumed % EVERY == 0, out
    got = metrics.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss")
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
    # The exported model directory.
    meta = model_dir.read_model_config(os.path.join(workdir, "model"), "speech_llm")
    assert meta["config"]["projector"]["out_dim"] == 32 and meta["llm_dir"] == world["llm"]
