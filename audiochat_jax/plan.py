"""``python -m audiochat_jax.plan --config configs/llama2_70b_chat.py:v5p-128 [--devices N] [--chip v5p]``

Plans the alignment step of a paper/pod config without the hardware: the trainer's own step
(train/loop.py: optimizer, donated TrainState, frozen LLM input, shardings from the logical
axis names) is AOT-lowered and compiled for N fake CPU devices on ``config.mesh_shape``, with
abstract parameters (``jax.ShapeDtypeStruct`` — nothing is allocated), and the compiled
executable's per-device memory (arguments, temporaries, outputs) and FLOPs are printed,
with the step time they imply at the chip's peak and whether the memory fits its HBM.

The batch is the largest bucket (``config.align.buckets[-1]`` samples of audio, full-length
labels and responses): the worst case the run will compile.

FLOPs: XLA's cost analysis counts a while-loop body once, so a scanned LLM
(``scan_layers=True``) is undercounted by its depth (measured: a 3-layer scanned step
counts 4.27e10 FLOPs, the same step with 1 unrolled layer 4.26e10). The missing
``layers - 1`` layers are added by their matmul count (train/align.py
``make_uncounted_flops``, the trainer's MFU uses the same; tests/test_flops.py holds it
within 3% of XLA's count of unrolled layers). ``--check_flops`` also compiles the step with
2 *unrolled* LLM layers and reports XLA's own extrapolation ``f_scan + (layers - 1) *
(f2 - f_scan)`` (doubles the compile time). Memory comes from the real, scanned compile.
CPU compiles differ from TPU/GPU ones in fusion and layout, so the memory is a planning
figure (good to ~10-20%), not a guarantee.

The align loss is ``train/align.py``'s own (``align.make_forward`` / ``make_loss``), built
with abstract inputs instead of model directories.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from audiochat_jax.parallel.chips import CHIPS

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "An align config with a `plan` section, e.g. configs/llama2_7b_chat.py:8xh100; "
    "override fields with --config.key=value.", lock_config=True)
_DEVICES = flags.DEFINE_integer(
    "devices", 0, "Fake CPU devices to compile for (0 = the product of config.mesh_shape).")
_JSON = flags.DEFINE_string("json_out", "", "Also write the report as JSON to this path.")
_CHECK_FLOPS = flags.DEFINE_bool(
    "check_flops", False, "Also compile the step with 2 unrolled LLM layers and report XLA's own "
    "per-layer FLOP extrapolation next to the matmul-count correction (twice the compile time).")
_CHIP = flags.DEFINE_enum(
    "chip", None, sorted(CHIPS), "Chip whose peak FLOP/s and HBM the step is compared with "
    "(default: config.plan.chip).")


# XLA:CPU has no bf16 dot: it converts both operands to f32. In a scanned LLM the convert of
# the frozen layer stack [layers, ...] is loop-invariant, so loop-invariant code motion
# hoists it out of the while loop: an f32 copy of every frozen weight, twice the LLM's
# argument bytes, appeared in the CPU plan's temporaries (measured on a 4-layer d=1024 LLM:
# 196 MiB of f32 converts of 98 MiB of bf16 layers; 70B on 16 devices planned 27.85 GiB of
# temporaries with it, 10.49 GiB without). TPUs and GPUs dot bf16 directly and have no such
# buffer, so the plan compiles without those two passes. The per-layer converts left inside
# the loop (one layer's weights in f32 at a time) are still counted: a CPU-only overestimate.
CPU_PLAN_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_disable_hlo_passes=while-loop-invariant-code-motion,"
                      "while-loop-expensive-invariant-code-motion")


# ---------------------------------------------------------------------------------------
# The align task from abstract parts
# ---------------------------------------------------------------------------------------
def abstract_batch(config, mesh) -> dict:
    """The largest-bucket global batch as sharded ``ShapeDtypeStruct``s."""
    import jax
    import jax.numpy as jnp
    from audiochat_jax.parallel import sharding
    a, B = config.align, config.batch_size
    shapes = {"audio": ((B, max(a.buckets)), jnp.float32), "audio_lengths": ((B,), jnp.int32),
              "labels": ((B, a.max_label_length), jnp.int32), "label_lengths": ((B,), jnp.int32),
              "response_ids": ((B, a.max_response_length), jnp.int32),
              "response_lengths": ((B,), jnp.int32), "valid": ((B,), jnp.bool_),
              "prefix_ids": ((B, config.plan.prefix_tokens), jnp.int32), "prefix_lengths": ((B,), jnp.int32),
              "suffix_ids": ((B, config.plan.suffix_tokens), jnp.int32), "suffix_lengths": ((B,), jnp.int32)}
    if a.ctc_weight > 0:
        shapes.update(ctc_labels=((B, a.ctc_max_label_length), jnp.int32), ctc_label_lengths=((B,), jnp.int32))
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, len(s)))
            for k, (s, d) in shapes.items()}


def abstract_task(config, mesh, llm_layers: int | None = None):
    """``(Task, LlamaConfig)`` of the align step with abstract, sharded frozen LLM params.

    ``llm_layers`` replaces the LLM depth, unrolled (no scan): the FLOP-count compiles.
    """
    import jax.numpy as jnp
    from audiochat_jax.audio.features import FeatureConfig
    from audiochat_jax.data.llm_on_mesh import abstract_llm
    from audiochat_jax.models.conformer import ConformerConfig
    from audiochat_jax.models.llama import LlamaConfig
    from audiochat_jax.models.projector import ProjectorConfig
    from audiochat_jax.models.speech_llm import AudioEmbedder
    from audiochat_jax.train import align, tasks

    a = config.align
    llm_cfg = LlamaConfig.from_dict(config.llm.to_dict())
    llm_cfg = llm_cfg.replace(**align.llm_overrides(a))
    if llm_layers is not None:
        llm_cfg = llm_cfg.replace(n_layers=llm_layers, scan_layers=False)
    enc_cfg = ConformerConfig.from_dict(config.plan.encoder.to_dict())
    feat_cfg = FeatureConfig.from_dict(config.plan.features.to_dict())
    proj_cfg = ProjectorConfig.from_dict(dict(a.projector.to_dict(), in_dim=enc_cfg.d_model, out_dim=llm_cfg.dim))
    embedder = AudioEmbedder(enc_cfg, proj_cfg, ctc_head=a.ctc_weight > 0)
    patterns = align.frozen_patterns(a.trainable, enc_cfg.n_layers)
    forward = align.make_forward(a, llm_cfg, embedder, feat_cfg, blank_id=enc_cfg.vocab_size - 1,
                                 patterns=patterns)
    loss = align.make_loss(a, forward)

    frozen, _ = abstract_llm(llm_cfg, mesh)

    def init(rng):
        frames = 64
        return embedder.init(rng, jnp.zeros((1, frames, enc_cfg.n_mels), jnp.float32),
                             jnp.array([frames], jnp.int32))

    task = tasks.Task(init=init, loss=loss, train_data=lambda: iter(()), frozen=frozen,
                      frozen_patterns=patterns,
                      uncounted_flops=align.make_uncounted_flops(a, llm_cfg, embedder, feat_cfg, init))
    return task, llm_cfg


# ---------------------------------------------------------------------------------------
# Compile and measure
# ---------------------------------------------------------------------------------------
def compile_step(config, mesh, llm_layers: int | None = None):
    """``(compiled, abstract_state, seconds, uncounted)``: the trainer's jitted step,
    AOT-compiled, and the global FLOPs XLA's count misses for a scanned LLM."""
    import jax
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import loop, optimizer

    task, _ = abstract_task(config, mesh, llm_layers)
    frozen_patterns = tuple(config.optimizer.frozen_patterns or ()) + tuple(task.frozen_patterns)
    tx, schedule = optimizer.make_optimizer(config, frozen_patterns)
    _, abstract_state, shardings = loop.train_state_shapes(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), sharding.axis_rules():
        batch = abstract_batch(config, mesh)
        compiled = step.lower(abstract_state, task.frozen, batch).compile()
        uncounted = task.uncounted_flops(batch)
    return compiled, abstract_state, time.perf_counter() - t0, uncounted


def analytic_llm_flops(config) -> float:
    """Per-step LLM FLOPs over all devices by the usual matmul count: the frozen LLM runs
    forward (2N per token), backward for activation gradients only (2N; no weight gradients),
    plus one more forward per remat'ed layer (2N with ``full``); attention scores add
    ``4 * layers * length * dim`` per token forward. A cross-check of XLA's count."""
    import jax
    from audiochat_jax.models.llama import LlamaConfig, init_params
    llm = LlamaConfig.from_dict(config.llm.to_dict())
    a = config.align
    n = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init_params(llm, jax.random.key(0)))))
    n -= llm.vocab_size * llm.dim  # the input embedding is a gather, not a matmul
    stride_ms = config.plan.encoder.subsampling_factor * config.plan.features.hop_ms * a.projector.stack
    length = (config.plan.prefix_tokens + int(max(a.buckets) / 16.0 / stride_ms) + config.plan.suffix_tokens
              + a.max_response_length)
    passes = 3 if (a.llm_remat_policy or llm.remat_policy) == "full" else 2
    per_token = passes * 2 * n + passes * 4 * llm.n_layers * length * llm.dim
    return per_token * length * config.batch_size


def plan(config, devices: int = 0, chip: str | None = None, check_flops: bool = False) -> dict:
    """Compiles and measures; returns the report dict (also what :func:`main` prints)."""
    import jax
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import flop_count

    # No loop.check_config: the data/model paths may stay unset, planning reads nothing.
    chip = chip or config.plan.chip
    if chip not in CHIPS:
        raise ValueError(f"config.plan.chip={chip!r}: use one of {sorted(CHIPS)}")
    n = devices or jax.device_count()
    if len(jax.devices()) < n:
        raise ValueError(f"{n} devices requested but JAX has {len(jax.devices())}; run plan as its own "
                         "process (it sets jax_num_cpu_devices before JAX starts)")
    mesh = sharding.make_mesh(config.mesh_shape, jax.devices()[:n])
    if config.batch_size % (sharding.batch_shards(mesh) * config.grad_accum_steps):
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by data*fsdp="
                         f"{sharding.batch_shards(mesh)} x grad_accum_steps")
    compiled, state, seconds, uncounted = compile_step(config, mesh)
    mem = compiled.memory_analysis()
    f_scan = flop_count.compiled_flops(compiled)
    flops = f_scan + uncounted / n  # per device: every device does 1/n of the global work
    checked = {}
    if check_flops and config.llm.scan_layers:
        f2 = flop_count.compiled_flops(compile_step(config, mesh, 2)[0])
        checked["flops_per_device_unrolled_check"] = f_scan + (config.llm.n_layers - 1) * (f2 - f_scan)
    spec = CHIPS[chip]
    total_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    trainable = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "config": config.plan.get("slice", ""), "devices": n, "mesh": dict(mesh.shape),
        "batch_size": config.batch_size, "audio_samples": max(config.align.buckets),
        "compile_seconds": seconds, "trainable_params": int(trainable),
        "argument_gib": mem.argument_size_in_bytes / 2**30, "output_gib": mem.output_size_in_bytes / 2**30,
        "alias_gib": mem.alias_size_in_bytes / 2**30, "temp_gib": mem.temp_size_in_bytes / 2**30,
        "total_gib": total_bytes / 2**30, "flops_per_device": flops,
        "analytic_llm_flops_per_device": analytic_llm_flops(config) / n,
        "chip": chip, "peak_flops": spec.peak_bf16_flops, "hbm_gib": spec.hbm_gib,
        "step_seconds_at_peak": flops / spec.peak_bf16_flops, "fits": total_bytes / 2**30 <= spec.hbm_gib,
        **checked,
    }


def format_report(r: dict) -> str:
    return "\n".join([
        f"plan {r['config']}: {r['devices']} devices, mesh {r['mesh']}, global batch {r['batch_size']} "
        f"x {r['audio_samples'] / 16000:.0f} s audio; {r['trainable_params']:,} trainable params; "
        f"compiled in {r['compile_seconds']:.1f} s",
        f"per-device memory: arguments {r['argument_gib']:.2f} GiB, temporaries {r['temp_gib']:.2f} GiB, "
        f"outputs {r['output_gib']:.2f} GiB (aliased with arguments {r['alias_gib']:.2f} GiB); "
        f"total {r['total_gib']:.2f} GiB of {r['hbm_gib']:g} GiB on {r['chip']}: "
        f"{'fits' if r['fits'] else 'DOES NOT FIT'}",
        f"per-device FLOPs/step: {r['flops_per_device']:.4g} (analytic LLM estimate "
        f"{r['analytic_llm_flops_per_device']:.4g}); at {r['chip']} peak {r['peak_flops'] / 1e12:g} TFLOP/s: "
        f"{r['step_seconds_at_peak']:.3f} s/step (100% MFU)",
    ] + ([f"--check_flops: XLA's count extrapolated from 2 unrolled layers "
          f"{r['flops_per_device_unrolled_check']:.4g} per device"]
         if "flops_per_device_unrolled_check" in r else []))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    config = _CONFIG.value
    if "plan" not in config:
        sys.exit(f"error: {flags.FLAGS['config'].value!r} has no `plan` section; use a paper/pod config "
                 "(configs/llama2_*_chat.py)")
    n = _DEVICES.value
    if not n:
        n = 1
        for s in config.mesh_shape:
            n *= abs(int(s))
    # Fake CPU devices, set before JAX starts its backends (AOT: nothing is allocated). The
    # CPU executable is never run, so skip LLVM's optimisations: buffer assignment (memory)
    # and HLO cost analysis (FLOPs) happen before them and do not change.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_PLAN_XLA_FLAGS).strip()
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
    try:
        report = plan(config, n, _CHIP.value, _CHECK_FLOPS.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(format_report(report), flush=True)
    if _JSON.value:
        import json
        with open(_JSON.value, "w") as f:
            json.dump({k: (bool(v) if k == "fits" else v) for k, v in report.items()}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
