"""The trainer, top to bottom: config -> mesh -> task & input -> shapes -> shardings ->
update step -> checkpoint / resume -> compile -> loop -> eval -> export.

One code path for every task (``config.task``, see tasks.py) and every scale: the step is
``jax.jit`` with explicit in/out shardings over the ``('data', 'fsdp', 'tensor')`` mesh and
the state donated; parameters are born sharded; checkpoints carry the data position; a
SIGTERM saves and returns. ``python -m audiochat_jax.train`` (``__main__.py``) calls
:func:`train`.
"""
from __future__ import annotations

import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from audiochat_jax.parallel import sharding
from audiochat_jax.train import checkpoint, metrics, optimizer, profile, tasks
from audiochat_jax.train.flop_count import matmul_flops
from audiochat_jax.train.state import TrainState

# ---------------------------------------------------------------------------------------
# Defensive globals
# ---------------------------------------------------------------------------------------
# Random bits must not depend on how an array is sharded, or a sharded step would draw
# different dropout/augmentation than the single-device one (and a resume on another mesh
# would diverge).
jax.config.update("jax_threefry_partitionable", True)


def _hide_accelerators_from_tf() -> None:
    # TF only reads data and writes TensorBoard events; left alone it would grab GPU memory.
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TF already initialised its devices (imported and used earlier): nothing to do


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with non-finite loss or gradients."""


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------
def base_config() -> ml_collections.ConfigDict:
    """The loop's fields. Placeholders are required: a run with one unset fails naming it.
    Task configs add their own section (``config.toy``, ``config.lm``, ...)."""
    c = ml_collections.ConfigDict()
    c.task = config_dict.placeholder(str)        # a name registered in train/tasks.py
    c.seed = 0
    c.total_steps = config_dict.placeholder(int)
    c.batch_size = config_dict.placeholder(int)  # global, over all hosts and microbatches
    c.grad_accum_steps = 1                       # microbatches per step (optimizer.py: why in-step)
    c.mesh_shape = (-1, 1, 1)                    # (data, fsdp, tensor); -1 = the rest
    c.log_every = 10
    c.eval_every = 0                             # 0: evaluate at the end only
    c.max_nonfinite_steps = 10                   # stop after this many skipped steps in a row
    c.peak_flops = 0.0                           # per-device peak FLOP/s for MFU (0: no MFU)
    c.init_from = ""                             # model directory whose params start the run
    c.resume_from = ""                           # another run's checkpoint dir (latest step)
    c.export_dir = ""                            # model directory written at the end ("" = WORKDIR/model)
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=0, end_lr_ratio=0.1, b1=0.9, b2=0.98, eps=1e-8,
        weight_decay=0.01, clip_norm=1.0, frozen_patterns=()))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3, async_save=True))
    # Trace steps [start_step, start_step + steps) into WORKDIR/profile (train/profile.py:
    # TensorBoard's profile plugin or Perfetto reads it); steps=0: off.
    c.profile = ml_collections.ConfigDict(dict(start_step=10, steps=0))
    return c


def check_config(config) -> None:
    """Fails loudly on unset required fields, naming every one. Required fields are
    ``config_dict.placeholder(type)``; a plain ``None`` is an ordinary optional value."""
    missing = []

    def walk(node, prefix):
        for key in node.keys():
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
            elif value is None and node.get_type(key) is not type(None):
                missing.append(prefix + key)  # a placeholder(type) left unset

    walk(config, "config.")
    if missing:
        raise ValueError(
            f"required config field(s) not set: {', '.join(missing)}; set them in the config "
            f"file or on the command line, e.g. --{missing[0]}=...")


# ---------------------------------------------------------------------------------------
# Update step (pure; jitted with shardings in train())
# ---------------------------------------------------------------------------------------
def _microbatches(batch: dict, n: int) -> dict:
    """``[B, ...] -> [n, B/n, ...]``; microbatch i takes rows i, i+n, ... so every device
    keeps contributing its local rows to every microbatch (no resharding)."""

    def split(x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def make_train_step(loss_fn, tx: optax.GradientTransformation, schedule, grad_accum_steps: int = 1):
    """``step(state, frozen, batch) -> (state, metrics)`` for a task's ``loss_fn``.

    Gradients are taken w.r.t. ``state.params`` only (``frozen`` and ``state.model_state``
    are inputs; the forward pass may return a new model_state, e.g. batch-norm statistics).
    With ``grad_accum_steps > 1`` the batch is scanned in microbatches (model_state threaded
    through them) and their gradients averaged, weighted by ``aux["tokens_sum"]`` when the
    task reports it (exact token mean). A step whose loss or gradient norm is not finite
    leaves params, model_state and optimizer state unchanged and increments
    ``nonfinite_streak`` (the loop stops the run when it is too long). Written by hand
    rather than ``optax.apply_if_finite`` because that checks the gradients only and, after
    its limit, applies the bad update instead of stopping.

    The state is donated and updated in place: the skip is a ``lax.cond`` around the optimizer
    update (only the taken branch runs). A ``where(finite, new, old)`` per array instead would
    read each old value where nothing orders that read before the update's write into the
    same donated buffer, and XLA would copy every parameter and moment first
    (tests/test_train_loop.py checks the compiled step copies none).
    """

    def params_loss(params, model_state, frozen, batch, rng):
        loss, aux = loss_fn({"params": params, **model_state}, frozen, batch, rng)
        aux = dict(aux)
        return loss, (aux, aux.pop("model_state", model_state))

    grad_fn = jax.value_and_grad(params_loss, has_aux=True)

    def weight_of(aux):
        return aux.get("tokens_sum", jnp.ones((), jnp.float32)).astype(jnp.float32)

    def loss_and_grads(params, model_state, frozen, batch, rng):
        if grad_accum_steps == 1:
            (loss, (aux, model_state)), grads = grad_fn(params, model_state, frozen, batch, rng)
            return loss, aux, model_state, grads
        micro = _microbatches(batch, grad_accum_steps)

        def body(carry, xs):
            sums, model_state = carry
            mb, index = xs
            (loss, (aux, model_state)), grads = grad_fn(params, model_state, frozen, mb,
                                                        jax.random.fold_in(rng, index))
            w = weight_of(aux)
            scaled = {k: v if k.endswith("_sum") else w * v for k, v in aux.items()}
            add = (w * loss, jax.tree.map(lambda g: w * g, grads), scaled, w)
            return (jax.tree.map(jnp.add, sums, add), model_state), None

        _, (aux_shape, _) = jax.eval_shape(params_loss, params, model_state, frozen,
                                           jax.tree.map(lambda x: x[0], micro), rng)
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params),
                 {k: jnp.zeros(v.shape, v.dtype) for k, v in aux_shape.items()},
                 jnp.zeros((), jnp.float32))
        ((loss, grads, aux, total), model_state), _ = jax.lax.scan(
            body, (zeros, model_state), (micro, jnp.arange(grad_accum_steps)))
        aux = {k: v if k.endswith("_sum") else v / total for k, v in aux.items()}
        return loss / total, aux, model_state, jax.tree.map(lambda g: g / total, grads)

    def step(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, aux, model_state, grads = loss_and_grads(state.params, state.model_state, frozen, batch, rng)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        # No metric reads the updates: their norm reads the old params (weight decay) where
        # nothing orders that read before the params' in-place update, and XLA copied every
        # decayed parameter to keep it (282 arrays a step in the 7B config).
        def update(operand):
            params, opt_state, _, new_model_state = operand
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, new_model_state

        def skip(operand):
            params, opt_state, old_model_state, _ = operand
            return params, opt_state, old_model_state

        operand = (state.params, state.opt_state, state.model_state, model_state)
        params, opt_state, model_state = jax.lax.cond(finite, update, skip, operand)
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
        out = dict(aux, loss=loss, grad_norm=grad_norm, lr=schedule(state.step),
                   param_norm=optax.tree.norm(params),
                   nonfinite_sum=(~finite).astype(jnp.float32),
                   nonfinite_streak=new_state.nonfinite_streak)  # for the loop, not logged
        return new_state, out

    return step


# ---------------------------------------------------------------------------------------
# Shapes and shardings
# ---------------------------------------------------------------------------------------
def state_shardings(init_fn, rng, mesh) -> tuple[Any, Any]:
    """``(abstract_state, shardings)`` of ``init_fn(rng)`` (which returns boxed leaves).

    Logical names come from the boxes; the optimizer state inherits them because optax
    maps over the boxed params. Shardings are expanded to the unboxed tree's full
    structure (masked optimizer entries are empty subtrees).
    """
    boxed = jax.eval_shape(init_fn, rng)
    # Outside a trace the boxes must not apply their sharding constraint: just strip them.
    is_box = lambda x: isinstance(x, nn.Partitioned)
    abstract = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x,
                            boxed, is_leaf=is_box)
    prefix = sharding.logical_to_sharding(boxed, mesh)
    shardings = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), prefix, abstract)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    return abstract, shardings


def train_state_shapes(task: tasks.Task, tx, mesh, seed: int):
    """``(init, abstract_state, shardings)``: shapes and shardings without allocating, and
    ``init()`` that creates the state born sharded (``jit(init, out_shardings)``)."""
    def init_fn(rng):
        init_rng, state_rng = jax.random.split(rng)
        variables = dict(task.init(init_rng))
        if "params" not in variables:
            raise ValueError(f"task init returned {sorted(variables)}; it must return model.init's "
                             "variables dict, with a 'params' collection")
        params = variables.pop("params")
        return TrainState.create(params, variables, tx.init(params), state_rng)

    rng = jax.random.PRNGKey(seed)
    with jax.set_mesh(mesh), sharding.axis_rules():
        abstract, shardings = state_shardings(init_fn, rng, mesh)
    jitted = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)

    def init():
        with jax.set_mesh(mesh), sharding.axis_rules():
            return jitted(rng)

    return init, abstract, shardings


def init_train_state(task: tasks.Task, tx, mesh, seed: int):
    """``(state, abstract_state, shardings)`` with the state initialised, born sharded."""
    init, abstract, shardings = train_state_shapes(task, tx, mesh, seed)
    return init(), abstract, shardings


def jit_train_step(task: tasks.Task, tx, schedule, shardings, mesh, grad_accum_steps: int = 1):
    """The donated, sharded step: ``(state, frozen, batch) -> (state, metrics)``."""
    step = make_train_step(task.loss, tx, schedule, grad_accum_steps)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, task.frozen)
    # The batch's shardings are its own: tasks.device_batch lays every [batch, ...] array
    # out with sharding.batch_sharding, so ``None`` (take the argument's) is exact.
    return jax.jit(step, in_shardings=(shardings, frozen_shardings, None),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def _shape_key(batch) -> tuple:
    return tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))


def _log_compiled(compiled, seconds: float, log) -> None:
    """Logs compile time and memory."""
    mem = compiled.memory_analysis()
    if mem is not None:
        log(f"compiled train step in {seconds:.1f}s; per-device memory: "
            f"args {mem.argument_size_in_bytes / 2**20:.1f} MiB, temps {mem.temp_size_in_bytes / 2**20:.1f} MiB, "
            f"output {mem.output_size_in_bytes / 2**20:.1f} MiB (aliased {mem.alias_size_in_bytes / 2**20:.1f} MiB)")
    else:
        log(f"compiled train step in {seconds:.1f}s")


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def train(config, workdir: str) -> dict:
    """Trains ``config.task`` in ``workdir``; returns ``{"status", "step", "train", "eval"}``.

    status: "done" (reached total_steps and exported) or "preempted" (SIGTERM: saved and
    returned early; rerunning the same command resumes). Raises NonFiniteError when
    ``config.max_nonfinite_steps`` consecutive steps were skipped.
    """
    check_config(config)
    _hide_accelerators_from_tf()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    log = metrics.log

    # --- Mesh ------------------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh_shape)
    n_batch_shards = sharding.batch_shards(mesh)
    if config.batch_size % (n_batch_shards * config.grad_accum_steps):
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the mesh's batch shards ({n_batch_shards}) "
            f"(mesh {dict(mesh.shape)}) times config.grad_accum_steps={config.grad_accum_steps}")
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices, {jax.process_count()} process(es)")

    # --- Task: model, loss, input ----------------------------------------------------
    task = tasks.get_task(config.task)(config, mesh)
    train_iter = task.train_data()

    # --- Model and optimizer shapes -> shardings; params born sharded ------------------
    frozen_patterns = tuple(config.optimizer.frozen_patterns or ()) + tuple(task.frozen_patterns)
    tx, schedule = optimizer.make_optimizer(config, frozen_patterns)
    init_state, abstract_state, shardings = train_state_shapes(task, tx, mesh, config.seed)
    trainable, total = optimizer.trainable_fraction(abstract_state.params, frozen_patterns)
    log(f"task {config.task}: {total:,} parameters, {trainable:,} trainable")

    # --- Update step -------------------------------------------------------------------
    step_fn = jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)

    # --- Checkpoint: resume order ------------------------------------------------------
    # 1. this workdir's latest checkpoint (a restart after preemption or a crash),
    # 2. config.resume_from: another run's checkpoint (state + data position),
    # 3. config.init_from: a model directory's params (fresh optimizer, data from the start),
    # 4. scratch.
    # Only 3 and 4 run the initialiser; restores write straight onto the shardings.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps,
                                   config.checkpoint.keep, config.checkpoint.async_save)
    start = ckpt.latest_step()
    if start is not None:
        state, data_state = ckpt.restore(start, abstract_state)
        train_iter.set_state(data_state)
        log(f"resumed from {ckpt.directory} step {start}")
    elif config.resume_from:
        state, data_state, start = checkpoint.restore_state(config.resume_from, None, abstract_state)
        train_iter.set_state(data_state)
        log(f"resumed from {config.resume_from} step {start}")
    elif config.init_from:
        state = init_state().replace(**checkpoint.load_init_variables(config.init_from, abstract_state))
        log(f"initialised from model directory {config.init_from}")
    else:
        state = init_state()
    start = int(start or 0)

    # --- Compile before the loop (sharding/OOM errors surface before training) ---------
    compiled: dict[tuple, Any] = {}  # one executable per batch shape (bucket)

    def compile_for(state, batch):
        key = _shape_key(batch)
        if key not in compiled:
            t0 = time.perf_counter()
            with jax.set_mesh(mesh), sharding.axis_rules():
                lowered = step_fn.lower(state, task.frozen, batch)
                compiled[key] = lowered.compile()
            seconds = time.perf_counter() - t0
            _log_compiled(compiled[key], seconds, log)
            writer.exclude(seconds)
            if not task.flops_per_step:  # the whole step's matmuls (global shapes before partitioning)
                missed = task.uncounted_flops(batch) if task.uncounted_flops else 0.0
                writer.flops_per_step = matmul_flops(lowered.as_text(dialect="hlo")) + missed
            else:
                writer.flops_per_step = task.flops_per_step
        return compiled[key]

    def fetch():
        return tasks.device_batch(next(train_iter), mesh), train_iter.get_state()

    writer = metrics.MetricsWriter(os.path.join(workdir, "tensorboard"), config.total_steps, start,
                                   config.log_every, peak_flops=config.peak_flops)
    # One directory per process: each host traces its own devices.
    profile_dir = os.path.join(workdir, "profile", *([f"process_{jax.process_index()}"] if jax.process_count() > 1 else []))
    tracer = profile.StepTrace(profile_dir, config.profile.start_step, config.profile.steps)
    if config.profile.steps and not start < config.profile.start_step <= config.total_steps - config.profile.steps + 1:
        log(f"warning: config.profile traces steps {config.profile.start_step}-"
            f"{config.profile.start_step + config.profile.steps - 1}, but this run goes from step "
            f"{start + 1} to {config.total_steps}: no profile will be written")
    watch = checkpoint.PreemptionWatch(ckpt.manager)
    result = {"status": "done", "step": start, "train": {}, "eval": {}}

    # --- Evals -------------------------------------------------------------------------
    def evaluate(step):
        if task.evaluate is not None:
            t0 = time.perf_counter()
            result["eval"] = task.evaluate(state.variables, task.frozen)
            writer.write(step, result["eval"], prefix="eval")
            writer.exclude(time.perf_counter() - t0)  # eval time is not step time

    def stop_if_nonfinite(step, streak):
        if int(streak) >= config.max_nonfinite_steps:
            raise NonFiniteError(
                f"{int(streak)} consecutive steps (up to step {step}) had a non-finite loss or "
                f"gradient norm; their updates were skipped ({int(state.nonfinite_total)} in "
                f"the run). The last checkpoint in {ckpt.directory} is step {ckpt.latest_step()}. "
                "Check the input data for NaN/inf, lower config.optimizer.learning_rate or "
                "raise config.optimizer.warmup_steps.")

    # --- Loop --------------------------------------------------------------------------
    try:
        step = start
        if step < config.total_steps:
            batch, data_state = fetch()
            compile_for(state, batch)  # later buckets compile (and are logged) on first sight
        writer.restart_clock()
        # The loop never waits for the step it has just dispatched: it reads the streak of
        # the step before, which has finished (or nearly), so the host queues the next step
        # while this one runs and the device has no gap between steps. So a too-long streak
        # stops the run one step later than it ends.
        previous = None  # (step, its nonfinite streak on the device)
        while step < config.total_steps:
            tracer.before(step + 1, state)
            state, step_metrics = compile_for(state, batch)(state, task.frozen, batch)
            step += 1
            streak = step_metrics.pop("nonfinite_streak")
            if previous is not None:
                stop_if_nonfinite(*previous)
            previous = (step, streak)
            step_data_state = data_state
            if step < config.total_steps:
                batch, data_state = fetch()  # host input overlaps the dispatched step
            logged = writer.step(step, step_metrics, force=step == config.total_steps)
            if logged:
                result["train"] = logged
            t0 = time.perf_counter()
            if line := tracer.after(step, state):
                log(line)
                writer.exclude(time.perf_counter() - t0)  # writing the trace is not step time
            preempted = watch.reached(step)
            ckpt.save(step, state, step_data_state, force=preempted or step == config.total_steps)
            if preempted:
                ckpt.wait()
                log(f"preempted: saved step {step} in {ckpt.directory}; rerun to resume")
                result.update(status="preempted", step=step)
                return result
            if config.eval_every and step % config.eval_every == 0 and step < config.total_steps:
                evaluate(step)
        if previous is not None:
            stop_if_nonfinite(*previous)
        result["step"] = step
        evaluate(step)

        # --- Export ----------------------------------------------------------------------
        if task.export is not None:
            out_dir = config.export_dir or os.path.join(workdir, "model")
            task.export(state.variables, out_dir)
            log(f"exported params to {out_dir}")
        return result
    finally:
        tracer.close()
        watch.close()
        writer.close()
        ckpt.close()

