"""The shared training loop on the toy task (train/toy.py), in process, on 8 fake CPU devices."""
from __future__ import annotations

import math
import re
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from audiochat_jax.models import model_dir
from audiochat_jax.parallel import sharding
from audiochat_jax.train import loop, metrics, optimizer, tasks, toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str, *overrides: str):
    """Parses ``--config=spec --config.k=v ...`` exactly as the CLI does (lock_config=True)."""
    argv = ["prog", f"--config={os.path.join(REPO, spec)}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def small_config(*overrides: str):
    # (A tuple field given twice on the command line accumulates, so the mesh is set once.)
    mesh = [] if any(o.startswith("--config.mesh_shape") for o in overrides) else ["--config.mesh_shape=(-1,1,1)"]
    return load_config("configs/smoke_toy.py", *mesh, "--config.log_every=1",
                       "--config.checkpoint.every_steps=10", *overrides)


def test_config_overrides_parse_and_typos_fail():
    c = load_config("configs/smoke_toy.py:sharded", "--config.total_steps=7",
                    "--config.optimizer.learning_rate=0.5", "--config.mesh_shape=(1,2,4)",
                    "--config.optimizer.frozen_patterns=('w2',)", "--config.toy.hidden=16")
    assert (c.total_steps, c.optimizer.learning_rate, tuple(c.mesh_shape)) == (7, 0.5, (1, 2, 4))
    assert tuple(c.optimizer.frozen_patterns) == ("w2",) and c.toy.hidden == 16
    with pytest.raises(Exception, match="totl_steps"):
        load_config("configs/smoke_toy.py", "--config.totl_steps=3")


def test_missing_required_fields_fail_naming_them(tmp_path):
    config = loop.base_config()
    config.task = "toy"
    with pytest.raises(ValueError, match=r"required config field\(s\) not set: config\.batch_size, "
                                         r"config\.total_steps; set them"):
        loop.train(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # failed before doing any work


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="config.task='nope'.*'toy'"):
        tasks.get_task("nope")


def test_loss_falls_checkpoints_and_exports(tmp_path):
    config = small_config("--config.total_steps=60", "--config.eval_every=30", "--config.peak_flops=1e9")
    result = loop.train(config, str(tmp_path))
    assert result["status"] == "done" and result["step"] == 60
    losses = metrics.read_scalars(str(tmp_path / "tensorboard"), "train/loss")
    assert sorted(losses) == list(range(1, 61))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(56, 61)])
    assert last < 0.4 * first, (first, last)
    # MFU from XLA's FLOP count of the compiled step and the configured peak.
    mfu = metrics.read_scalars(str(tmp_path / "tensorboard"), "train/mfu")
    assert sorted(mfu) == list(range(1, 61)) and all(0 < v < 1 for v in mfu.values())
    evals = metrics.read_scalars(str(tmp_path / "tensorboard"), "eval/loss")
    assert sorted(evals) == [30, 60] and evals[60] < evals[30]
    # checkpoints every 10 steps, 3 kept; the exported model equals the final state.
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [40, 50, 60]
    meta, params = model_dir.load_model_dir(str(tmp_path / "model"), "toy_mlp")
    assert meta["config"]["hidden"] == config.toy.hidden
    eval_again = toy.toy_task(config, sharding.make_mesh((-1, 1, 1))).evaluate({"params": params}, None)
    np.testing.assert_allclose(eval_again["loss"], evals[60], rtol=1e-6)
    # A rerun of the finished run resumes at 60 and trains nothing more.
    assert loop.train(config, str(tmp_path))["step"] == 60


class _PreemptAt:
    """Wraps the toy input: fetching batch ``index`` sends this process a SIGTERM, as a
    scheduler would; the loop then saves the step it just finished and returns."""

    def __init__(self, inner, index):
        self.inner, self.index = inner, index

    def __next__(self):
        if self.inner.index == self.index:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, s):
        self.inner.set_state(s)


def test_resume_onto_a_different_mesh_continues_the_same_run(tmp_path):
    """Preempted on (data=8), resumed on (data=2, fsdp=2, tensor=2): orbax restores onto the
    new shardings and the curve continues as if nothing happened (within 1e-5)."""
    @tasks.register("toy_preempted_at_20")
    def factory(config, mesh):
        task = toy.toy_task(config, mesh)
        inner = task.train_data
        task.train_data = lambda: _PreemptAt(inner(), 20)
        return task

    moved, stayed = str(tmp_path / "moved"), str(tmp_path / "stayed")
    first = loop.train(small_config("--config.total_steps=30", "--config.task=toy_preempted_at_20"), moved)
    assert (first["status"], first["step"]) == ("preempted", 20)
    assert loop.train(small_config("--config.total_steps=30", "--config.mesh_shape=(2,2,2)"), moved)["step"] == 30
    loop.train(small_config("--config.total_steps=30"), stayed)
    got = metrics.read_scalars(os.path.join(moved, "tensorboard"), "train/loss")
    want = metrics.read_scalars(os.path.join(stayed, "tensorboard"), "train/loss")
    assert sorted(got) == sorted(want) == list(range(1, 31))
    np.testing.assert_allclose([got[s] for s in range(1, 31)], [want[s] for s in range(1, 31)],
                               atol=1e-5, rtol=0)


def _init_and_step(config, mesh, n_steps):
    task = toy.toy_task(config, mesh)
    tx, schedule = optimizer.make_optimizer(config)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    data = task.train_data()
    out = []
    with jax.set_mesh(mesh), sharding.axis_rules():
        for _ in range(n_steps):
            old = state
            state, m = step(state, None, tasks.device_batch(next(data), mesh))
            assert old.params["w1"].is_deleted()  # the state was donated
            out.append(float(m["loss"]))
    return state, out


def test_sharded_step_equals_single_device_step():
    config = small_config()
    one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    eight = sharding.make_mesh((2, 2, 2))
    ref_state, ref_losses = _init_and_step(config, one, 3)
    state, losses = _init_and_step(config, eight, 3)
    # Really sharded: weights over (fsdp, tensor), Adam moments alike, batch over (data, fsdp).
    assert state.params["w1"].sharding.spec == P("fsdp", "tensor")
    assert state.params["w2"].sharding.spec == P("tensor", "fsdp")
    mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
    assert any(getattr(x, "mu", None) is not None and x.mu["w1"].sharding.spec == P("fsdp", "tensor")
               for x in mu)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def copied_donated_arrays(hlo_text: str) -> list[tuple[str, str]]:
    """``[(parameter, shape), ...]``: the donated inputs (aliased to an output in the compiled
    module's ``input_output_alias``) that the entry computation copies: the input is copied
    before its buffer is reused, or a ``copy`` lands in the root tuple at the aliased output."""
    header = hlo_text.split("\n", 1)[0]
    param_of_output = {int(o): int(p) for o, p in re.findall(r"\{(\d+)\}:\s*\((\d+),", header)}
    donated = set(param_of_output.values())
    entry = hlo_text[hlo_text.find("\nENTRY"):]
    params = {m.group(1): (int(m.group(3)), m.group(2)) for m in
              re.finditer(r"^\s*%([\w.\-]+) = (\S+) parameter\((\d+)\)", entry, re.M)}
    by_number = {number: (name, shape) for name, (number, shape) in params.items()}
    copy_of = {m.group(1): m.group(2) for m in
               re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = \S+ copy\(%([\w.\-]+)\)", entry, re.M)}
    copied = {}
    for operand in copy_of.values():
        if operand in params and params[operand][0] in donated:
            copied[operand] = params[operand][1]
    root = re.search(r"^\s*ROOT %[\w.\-]+ = .* tuple\(([^)]*)\)", entry, re.M)
    outputs = re.findall(r"%([\w.\-]+)", root.group(1)) if root else []
    for index, name in enumerate(outputs):
        if name in copy_of and index in param_of_output:
            copied.setdefault(*by_number[param_of_output[index]])
    return sorted(copied.items())


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_step_updates_the_donated_state_in_place(mesh_shape):
    # XLA copies a donated input whose old value may still be read after the write that reuses
    # its buffer (or writes the new value elsewhere and copies it in): the step would read and
    # write its whole state twice. The step's skip of a non-finite update is a conditional,
    # which copies nothing, on one device or sharded.
    config = small_config()
    mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:math.prod(mesh_shape)])
    task = toy.toy_task(config, mesh)
    tx, schedule = optimizer.make_optimizer(config)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    batch = tasks.device_batch(next(task.train_data()), mesh)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh)
    with jax.set_mesh(mesh), sharding.axis_rules():
        hlo = step.lower(state, None, batch).compile().as_text()
    # Scalars (the step count) cost nothing.
    assert [name for name, shape in copied_donated_arrays(hlo) if "[]" not in shape] == []
    # The check sees a copy where one must happen: the old value returned beside the new one.
    x = jnp.ones((64, 64))
    hlo = jax.jit(lambda a: (a + 1, a), donate_argnums=0).lower(x).compile().as_text()
    assert copied_donated_arrays(hlo)


def test_gradient_accumulation_equals_full_batch():
    mesh = sharding.make_mesh((2, 2, 2))
    full_state, full_losses = _init_and_step(small_config(), mesh, 2)
    acc_state, acc_losses = _init_and_step(small_config("--config.grad_accum_steps=2"), mesh, 2)
    np.testing.assert_allclose(acc_losses, full_losses, atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(full_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_frozen_patterns_freeze_params():
    mesh = sharding.make_mesh((-1, 1, 1))
    config = small_config("--config.optimizer.frozen_patterns=('w2',)")
    task = toy.toy_task(config, mesh)
    tx, _ = optimizer.make_optimizer(config)
    before, _, _ = loop.init_train_state(task, tx, mesh, config.seed)
    w2, w1 = np.asarray(before.params["w2"]), np.asarray(before.params["w1"])
    after, _ = _init_and_step(config, mesh, 2)
    np.testing.assert_array_equal(np.asarray(after.params["w2"]), w2)
    assert not np.allclose(np.asarray(after.params["w1"]), w1)
    assert optimizer.trainable_fraction(after.params, ("w2",)) == (8 * 32 + 32, 8 * 32 + 32 + 32 * 4)


class _NaNAt:
    """Wraps the toy input: batches whose index is in ``bad`` carry a NaN."""

    def __init__(self, inner, bad):
        self.inner, self.bad = inner, set(bad)

    def __next__(self):
        index = self.inner.index
        batch = next(self.inner)
        if index in self.bad:
            batch["x"] = batch["x"].copy()
            batch["x"][0, 0] = np.nan
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, s):
        self.inner.set_state(s)


def _register_nan_task(name, bad):
    @tasks.register(name)
    def factory(config, mesh):
        task = toy.toy_task(config, mesh)
        inner = task.train_data
        task.train_data = lambda: _NaNAt(inner(), bad)
        return task


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    _register_nan_task("toy_nan_once", bad=[4])  # the batch of step 5
    config = small_config("--config.task=toy_nan_once", "--config.total_steps=12")
    loop.train(config, str(tmp_path))
    tb = str(tmp_path / "tensorboard")
    skipped = metrics.read_scalars(tb, "train/nonfinite")
    assert [s for s, v in skipped.items() if v] == [5]
    norms = metrics.read_scalars(tb, "train/param_norm")
    assert norms[5] == norms[4] and norms[6] != norms[5]  # no update at step 5, training goes on
    assert np.isfinite(metrics.read_scalars(tb, "train/loss")[12])


def test_nonfinite_run_stops_with_a_clear_message(tmp_path):
    _register_nan_task("toy_nan_forever", bad=range(6, 1000))
    config = small_config("--config.task=toy_nan_forever", "--config.total_steps=50",
                          "--config.max_nonfinite_steps=3")
    with pytest.raises(loop.NonFiniteError, match=r"3 consecutive steps \(up to step 9\).*last checkpoint"):
        loop.train(config, str(tmp_path))


def test_init_from_model_directory_in_both_layouts(tmp_path):
    """``config.init_from`` starts from exported params: bare params (Llama's layout) or a
    variables dict with a 'params' collection (the conformer's); step 1's loss is the
    loss of those params on the first batch."""
    config = small_config("--config.total_steps=30")
    loop.train(config, str(tmp_path / "a"))
    _, params = model_dir.load_model_dir(str(tmp_path / "a" / "model"), "toy_mlp")
    model_dir.save_model_dir(str(tmp_path / "as_variables"), "toy_mlp", {}, {"params": params})
    first = next(toy.ToyData(config.toy, config.batch_size, config.seed))
    want = float(np.mean((toy.MLP(config.toy.hidden, config.toy.out_dim).apply(
        {"params": params}, first["x"]) - first["y"]) ** 2))
    for name, source in (("b", tmp_path / "a" / "model"), ("c", tmp_path / "as_variables")):
        run = small_config("--config.total_steps=1", "--config.optimizer.warmup_steps=0",
                           f"--config.init_from={source}")
        loop.train(run, str(tmp_path / name))
        got = metrics.read_scalars(str(tmp_path / name / "tensorboard"), "train/loss")[1]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        loop.train(small_config("--config.total_steps=1", "--config.optimizer.warmup_steps=0",
                                f"--config.init_from={tmp_path}"), str(tmp_path / "d"))
