"""Align train step: step time and achieved FLOP/s vs this machine's matmul peak (MFU).

    python bench/align_step.py                       # mini sizes, batch 16 x 3 s audio
    python bench/align_step.py --batch_size 8 --seconds 2 --steps 5

Builds the real ``align`` task (train/align.py) on random mini-world-sized models written to a
temporary directory — the frozen LLM (d=128, 4 layers, vocab 1000), the conformer of
configs/conformer_mini.py (d=144, 4 blocks, 32-channel subsampling) and an MLP projector, in
float32 as the mini world trains them — and times the real jitted, donated train step of the
shared loop (train/loop.py) on one device: log-mel, encoder, projector, splice, frozen-LLM
forward + backward to the audio embeddings, AdamW. FLOPs per step are the step's matmuls
(``flop_count.matmul_flops``: its dots and convolutions, as the trainer's MFU counts them); XLA's
count of all its ops (``cost_analysis``: + norms, softmax, dropout's hashing, AdamW) is printed
beside them. The peak is measured in the same run: a jitted 2048^3
matmul, the faster of float32 and bfloat16 inputs (float32 accumulation), median of 5, before
and after the step timing. Prints step time, achieved GFLOP/s, the peak, and MFU = achieved /
peak (target >= 0.5). ``--profile DIR`` then traces 3 steps into DIR and prints op time by
model part and by kind of op, with the bytes each kind moves (train/profile.py;
docs/performance.md reads them).

    python bench/align_step.py --config configs/llama2_7b_chat.py:8xh100 --seconds 10

``--config`` times a paper/pod slice's step on this one device instead: the config's frozen
LLM (Llama-2-7B dimensions, scanned, bf16, its remat policy) with random weights made on the
device (no model directory: the 13.5 GB would only be written and read back), the paper
conformer of the config's ``plan`` section, at the config's per-device batch (``--batch_size``
overrides) and ``--llm_layers`` to cut the depth. FLOPs = the matmul count + the scanned layers
it counts once (``task.uncounted_flops``, as the trainer's MFU). On a GPU the peak is measured
with 8192^3 bf16 matmuls (``--peak_n``), and the chip's data-sheet peak is printed beside it.

Measured (2026-11-26; the GPU runs with jax 0.11.2 / flax 0.12.10, the code unchanged; all in
docs/performance.md):
  2-core dev CPU, mini, f32, batch 16 x 3 s  555-793 ms/step, 32-46 GFLOP/s: MFU 0.23-0.29
                                           (before the depthwise convs became slices: 895 and
                                           1041 ms in paired runs; the machine is noisy)
  one H100 80GB HBM3, mini, batch 16 x 3 s 9.0 ms/step, 2.7 TFLOP/s: MFU 0.004 (a 1M-param
                                           LLM cannot fill a GPU; the step is launch-bound)
  one H100, --config configs/llama2_7b_chat.py:8xh100 (6.74B frozen, 32 scanned layers,
  remat dots_no_batch, paper conformer d=512 x 16), batch 8 x 10 s
                                           267.5 ms/step, 200 TFLOP/s: MFU 0.288 of the
                                           measured 696 TFLOP/s peak (0.203 of the 989 data
                                           sheet); compile 144.5 s (before the depthwise change)
                                           261.7 ms/step, 204.8 TFLOP/s: MFU 0.295 of 693.7
                                           (depthwise convs as slices); compile 158.5 s warm,
                                           over 200 s on a fresh machine
  same, batch 16 x 10 s (--batch_size 16; 2026-11-27, jax 0.11.2, scanned conformer)
                                           440.2 ms/step, 245 TFLOP/s: MFU 0.385 of 637.0;
                                           311.7 ms/step, 345 TFLOP/s: MFU 0.532 of 648.5
                                           with the backward's matmuls in bf16 (llama._dot);
                                           compile 92-95 s on a fresh machine
  2-core AMD EPYC (AVX512-BF16: its bf16 peak is ~2x its f32 one), mini, f32, batch 16 x 3 s
                                           477 ms/step, 53.6 GFLOP/s: MFU 0.145 of the bf16
                                           peak, 0.280 of the f32 one (2026-11-26)
                                           423-492 ms/step: MFU 0.14-0.19 of bf16, 0.27-0.33 of
                                           f32, with the depthwise conv's own gradient and
                                           16-bit dropout draws (2026-11-27; 534-616 ms before,
                                           in turn with them)
                                           371 ms/step, 68.4 GFLOP/s: MFU 0.178 of bf16, 0.344
                                           of f32, with the 1-D conv's kernel gradient as a
                                           matmul and lengths without floor division
                                           (2026-11-27; 368-382 ms vs 386-415 ms, in turn)
                                           321.0 ms/step: MFU 0.230 of bf16, 0.409 of f32, with
                                           huge pages (2026-11-27, stop 22)
                                           325.8 ms/step (min 295.7) on a busy machine: MFU
                                           0.219 of bf16, 0.399 of f32 on the matmul FLOPs
                                           (23.48 G; XLA's count 26.61 G), with dropout's hash
                                           unrolled and the stem's 1x1 conv as a matmul: 0.957-
                                           0.973 of the stop-22 step's time (align_step_ab.py)
                                           286.2; 304.3 ms/step: MFU 0.224; 0.210 of bf16,
                                           0.413; 0.439 of f32, with dropout's masks four
                                           elements per hash (stop 27; 0.952-0.976 of the
                                           stop-26 step's time, align_step_ab.py)
GPU profiles: run with XLA_FLAGS=--xla_gpu_enable_command_buffer= (kernels inside CUDA graphs
are not named in the trace; docs/performance.md), and time steps without it.
bench/gpu_7b_step.sh runs this bench's GPU checks of the 7B step within a device session.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from audiochat_jax import huge_pages  # noqa: E402

if __name__ == "__main__":  # before the heavy imports: it reruns this command (AUDIOCHAT_HUGE_PAGES=0: not)
    huge_pages.reexec_with_huge_pages()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 5, m: int | None = None, k: int | None = None,
                dtype=jnp.bfloat16) -> float:
    """FLOP/s of a jitted [m, k] x [k, n] matmul (square n^3 by default), ``dtype`` inputs,
    f32 accumulation (median of ``reps``)."""
    m, k = m or n, k or n
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k)), dtype)
    b = jnp.asarray(rng.standard_normal((k, n)), dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times)


def write_mini_models(root: str, vocab_size: int = 1000, dtype: str = "float32") -> dict:
    """Random mini-sized LLM + conformer model directories, a tokenizer and a responses file."""
    from audiochat_jax import model_dir
    from audiochat_jax.audio.features import FeatureConfig
    from audiochat_jax.models import conformer
    from audiochat_jax.models.conformer import ConformerConfig
    from audiochat_jax.models.llama import LlamaConfig, init_params
    from audiochat_jax.text.char_vocab import CharVocab
    from audiochat_jax.text.tokenizer import train_sentencepiece
    words = "what is the capital of france two plus three hello where does anna live red blue".split()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 8)) for _ in range(2000)] + ["[INST] <<SYS>> [/INST]"]
    spm = train_sentencepiece(corpus, os.path.join(root, "spm"), vocab_size=300)
    llm = LlamaConfig(vocab_size=vocab_size, dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=384,
                      max_seq_len=512, dtype=dtype, param_dtype="float32")
    params = nn.unbox(jax.jit(lambda r: init_params(llm, r))(jax.random.key(0)))
    os.makedirs(os.path.join(root, "llm"), exist_ok=True)
    shutil.copyfile(spm, os.path.join(root, "llm", "tokenizer.model"))
    model_dir.save_model_dir(os.path.join(root, "llm"), "llama", llm.to_dict(), params, tokenizer="tokenizer.model")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    import conformer_mini
    enc = ConformerConfig.from_dict(dict(conformer_mini.get_config().encoder.to_dict(), dtype=dtype))
    conformer.save(os.path.join(root, "conformer"), enc, conformer.init_variables(enc, jax.random.key(1)),
                   features=FeatureConfig(n_mels=enc.n_mels).to_dict(), vocab=CharVocab.english().to_dict())
    with open(os.path.join(root, "responses.jsonl"), "w") as f:
        f.write(json.dumps({"id": "x", "response_ids": [5, 2]}) + "\n")
    return {"llm": os.path.join(root, "llm"), "encoder": os.path.join(root, "conformer"),
            "responses": os.path.join(root, "responses.jsonl")}


def random_host_batch(batch_size: int, samples: int, label_length: int, response_length: int,
                      ctc_length: int, vocab_size: int, seed: int = 0) -> dict:
    """An align batch of random audio [b, samples] and token ids (3/4 of each row valid); CTC
    labels at ~12 characters per second of audio (a feasible CTC target for 40-80 ms frames)."""
    rng = np.random.default_rng(seed)
    return {"audio": (0.1 * rng.standard_normal((batch_size, samples))).astype(np.float32),
            "audio_lengths": np.full((batch_size,), samples, np.int32),
            "labels": rng.integers(3, vocab_size, (batch_size, label_length)).astype(np.int32),
            "label_lengths": np.full((batch_size,), label_length * 3 // 4, np.int32),
            "response_ids": rng.integers(3, vocab_size, (batch_size, response_length)).astype(np.int32),
            "response_lengths": np.full((batch_size,), response_length * 3 // 4, np.int32),
            "valid": np.ones((batch_size,), bool),
            "ctc_labels": rng.integers(0, 28, (batch_size, ctc_length)).astype(np.int32),
            "ctc_label_lengths": np.full((batch_size,), min(ctc_length, int(samples / 16000 * 12)), np.int32)}


def compiled_step(task, config, mesh, host_batch: dict):
    """``(run, flops)`` for the trainer's real jitted, donated step of ``task``: ``run()``
    executes one step on ``host_batch`` (state carried); ``flops`` = the step's matmul FLOPs
    (``flop_count.matmul_flops``) + the scanned layers counted once; ``run.xla_flops`` = XLA's count
    of all ops + the same."""
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import flop_count, loop, optimizer, tasks
    patterns = tuple(config.optimizer.frozen_patterns or ()) + tuple(task.frozen_patterns)
    tx, schedule = optimizer.make_optimizer(config, patterns)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps, config.nonfinite_skip)
    batch = tasks.device_batch(host_batch, mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), sharding.axis_rules():
        lowered = step.lower(state, task.frozen, batch)
        compiled = lowered.compile()
    print(f"  compiled the step in {time.perf_counter() - t0:.1f}s", flush=True)
    # A step that updates its donated state in place copies none of it (train/loop.py
    # make_train_step; stop 20's step copied 1504 arrays in the 7B config, 402 in the mini one).
    from audiochat_jax.train import profile
    hlo = compiled.as_text()
    copied = [name for name, shape in profile.copied_donated_arrays(hlo) if "[]" not in shape]
    print(f"  donated state arrays not updated in place (copied each step): {len(copied)}"
          + (f" (e.g. {copied[0]})" if copied else ""), flush=True)
    flops, xla_flops = flop_count.matmul_flops(lowered.as_text(dialect="hlo")), flop_count.compiled_flops(compiled)
    if task.uncounted_flops is not None:
        flops, xla_flops = flops + task.uncounted_flops(batch), xla_flops + task.uncounted_flops(batch)
    holder = {"state": state}

    def run():
        with jax.set_mesh(mesh), sharding.axis_rules():
            holder["state"], m = compiled(holder["state"], task.frozen, batch)
        return m["loss"]

    run.hlo = hlo  # for --profile: it maps trace ops to source op names
    run.xla_flops = xla_flops
    return run, flops


def make_align_step(root: str, batch_size: int, samples: int, label_length: int = 48,
                    response_length: int = 48, overrides: list[str] = (), **align_overrides):
    """``(run, flops)``: ``run()`` executes one real align train step (state donated and carried)
    on a random batch of ``batch_size`` x ``samples`` audio; ``flops`` = its matmul FLOPs.
    ``overrides`` (``--set``) change the trainer's config (e.g. ``nonfinite_skip=select``,
    ``align.encoder_dtype=bfloat16``); the model sizes are the mini world's, written here."""
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import align
    paths = write_mini_models(root)
    config = align.mini_config()
    config.batch_size, config.total_steps = batch_size, 1000
    config.align.update(llm_dir=paths["llm"], encoder_dir=paths["encoder"], data_dir=root,
                        responses=paths["responses"], max_label_length=label_length,
                        max_response_length=response_length, **align_overrides)
    apply_overrides(config, list(overrides))
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    task = align.align_task(config, mesh)
    return compiled_step(task, config, mesh, random_host_batch(
        batch_size, samples, label_length, response_length, 256, 300))


def random_like(abstract, seed: int = 0):
    """Arrays of ``abstract``'s shapes, dtypes and shardings, N(0, 0.02^2), made on the devices."""
    leaves, treedef = jax.tree.flatten(abstract)
    keys = list(jax.random.split(jax.random.key(seed), len(leaves)))
    make = jax.jit(lambda ks: [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                               for k, x in zip(ks, leaves)],
                   out_shardings=[x.sharding for x in leaves])
    return jax.tree.unflatten(treedef, make(keys))


def apply_overrides(config, overrides: list[str]) -> list[str]:
    """``["llm.attention_impl=cudnn", ...]`` set on ``config`` (the trainer's ``--config.x=y``),
    each value parsed as the field's current type; returns them as ``key=value`` for the log."""
    done = []
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise SystemExit(f"--set {item}: write KEY=VALUE, e.g. --set llm.attention_impl=cudnn")
        node, *path = [config] + key.split(".")
        try:
            for name in path[:-1]:
                node = node[name]
            current = node[path[-1]]
        except (KeyError, AttributeError, TypeError):
            raise SystemExit(f"--set {item}: the config has no field {key!r}") from None
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {item}: {key} is a bool: write true or false")
            value = text.lower() in ("true", "1")
        elif current is None or isinstance(current, str):
            value = text
        elif isinstance(current, (int, float)):
            try:
                value = type(current)(text)
            except ValueError:
                raise SystemExit(f"--set {item}: {key} is a {type(current).__name__}") from None
        else:
            raise SystemExit(f"--set {item}: {key} is a {type(current).__name__}; --set takes "
                             "strings, numbers and bools (edit the config file for the rest)")
        node[path[-1]] = value
        done.append(f"{key}={value}")
    return done


def make_config_step(config_arg: str, batch_size: int, samples: int, llm_layers: int = 0,
                     overrides: list[str] = ()):
    """``(run, flops, batch_size, description)`` of a slice config's align step on one device: its frozen
    LLM with random weights, its plan encoder, per-device batch (``batch_size`` 0 = the
    config's), ``samples`` of audio, ``llm_layers`` (0 = the config's depth), ``overrides``
    (``--set``) applied to the config."""
    import dataclasses
    from audiochat_jax import plan
    from audiochat_jax.parallel import sharding
    from audiochat_jax.slices import sibling_config
    path, _, arg = config_arg.partition(":")
    config = sibling_config(path, os.path.basename(path), arg or None)
    per_device = config.batch_size // (config.mesh_shape[0] * config.mesh_shape[1])
    config.batch_size, config.mesh_shape = batch_size or per_device, (1, 1, 1)
    if llm_layers:
        config.llm.n_layers = llm_layers
    changed = apply_overrides(config, list(overrides))
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    t0 = time.perf_counter()
    task, llm_cfg = plan.abstract_task(config, mesh)
    task = dataclasses.replace(task, frozen=jax.block_until_ready(random_like(task.frozen)))
    print(f"  random frozen LLM on the device in {time.perf_counter() - t0:.1f}s; compiling the step", flush=True)
    a = config.align
    run, flops = compiled_step(task, config, mesh, random_host_batch(
        config.batch_size, samples, a.max_label_length, a.max_response_length,
        a.ctc_max_label_length, llm_cfg.vocab_size))
    n_llm = sum(x.size for x in jax.tree.leaves(task.frozen))
    description = (f"{config_arg}: frozen LLM {n_llm / 1e9:.2f}B params ({llm_cfg.n_layers} layers, d={llm_cfg.dim}, "
                   f"{llm_cfg.dtype}, remat {llm_cfg.remat_policy or 'none'}), paper conformer "
                   f"d={config.plan.encoder.d_model} x {config.plan.encoder.n_layers}, batch {config.batch_size}"
                   + "".join(f", {c}" for c in changed))
    return run, flops, config.batch_size, description


def time_steps(run, steps: int) -> list[float]:
    """Seconds of each of ``steps`` steps, after one warm-up step. Also prints the host's
    minor page faults per step (the temporaries XLA:CPU allocates each step: audiochat_jax/
    huge_pages.py)."""
    jax.block_until_ready(run())
    times, faults = [], []
    for _ in range(steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"  host memory: {statistics.median(faults):.0f} page faults per step; glibc huge pages "
          f"{'on' if huge_pages.enabled() else 'off'}, kernel THP mode "
          f"{huge_pages.thp_mode()}", flush=True)
    return times


def profile_steps(run, out_dir: str, steps: int = 3) -> None:
    """Traces ``steps`` steps into ``out_dir`` (TensorBoard's profile plugin or ui.perfetto.dev)
    and prints each model part's op time per step, as the trainer's config.profile does; the
    step's HLO goes beside the trace (``step.hlo.txt.gz``)."""
    import gzip
    from audiochat_jax.train import profile
    hlo = run.hlo
    tracer = profile.StepTrace(out_dir, 1, steps)
    for step in range(1, steps + 1):
        tracer.before(step)
        jax.block_until_ready(run())
        table = tracer.after(step, lambda: [hlo])
    # Beside the trace, so that it can be read again elsewhere (profile.op_time_by_part(DIR,
    # [hlo], steps) with the HLO read back from this file).
    with gzip.open(os.path.join(out_dir, "step.hlo.txt.gz"), "wt") as f:
        f.write(hlo)
    print(table)


def main():
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a long compile/step is
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", help="a slice config (e.g. configs/llama2_7b_chat.py:8xh100): time "
                   "its step on one device with random weights; default: the mini sizes")
    p.add_argument("--batch_size", type=int, default=0,
                   help="utterances per step (default: 16 for mini, the config's per-device batch with --config)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="padded audio length per utterance (default: 3 for mini, 10 with --config)")
    p.add_argument("--llm_layers", type=int, default=0, help="with --config: LLM depth (0 = the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, as the trainer's --config.KEY=VALUE (repeatable), e.g. "
                        "--set llm.attention_impl=cudnn --set align.llm_remat_policy=none; without --config "
                        "the mini trainer config's fields (e.g. --set nonfinite_skip=select), not the model sizes")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="also trace 3 steps into DIR (TensorBoard / Perfetto) and print op time by model part")
    p.add_argument("--peak_n", type=int, default=0,
                   help="square matmul size for the peak (default: 8192 on a GPU/TPU, 2048 on CPU)")
    args = p.parse_args()
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    print(f"device: {device.device_kind} ({device.platform}), {os.cpu_count()} CPUs visible, jax {jax.__version__}")
    peak_n = args.peak_n or (2048 if on_cpu else 8192)
    # The peak is the faster of the two square-matmul forms: on some CPUs bf16 inputs win
    # (ENV-NOTES), on others f32 does (measured here: 125 vs 88 GFLOP/s). Accelerators: bf16.
    dtypes = (jnp.float32, jnp.bfloat16) if on_cpu else (jnp.bfloat16,)
    square_peaks = lambda: {d: matmul_peak(peak_n, dtype=d) for d in dtypes}  # noqa: E731
    peaks_before = square_peaks()
    seconds = args.seconds or (10.0 if args.config else 3.0)
    samples = int(seconds * 16000)
    t0 = time.perf_counter()
    if args.config:
        run, flops, batch_size, what = make_config_step(args.config, args.batch_size, samples, args.llm_layers, args.set)
        times = time_steps(run, args.steps)
        if args.profile:
            profile_steps(run, args.profile)
    else:
        batch_size = args.batch_size or 16
        what = (f"mini sizes (LLM d=128 x 4, conformer d=144 x 4), batch {batch_size}"
                + "".join(f", {item}" for item in args.set))
        with tempfile.TemporaryDirectory() as root:
            run, flops = make_align_step(root, batch_size, samples, overrides=args.set)
            times = time_steps(run, args.steps)
            if args.profile:
                profile_steps(run, args.profile)
    print(f"{what}: built, compiled and ran {args.steps + 1} steps in {time.perf_counter() - t0:.1f}s; "
          f"FLOPs/step {flops / 1e9:.2f} G in matmuls (XLA's count of all ops: {run.xla_flops / 1e9:.2f} G)")
    # Before and after: the machine is shared and noisy.
    peaks = {d: max(p, q) for (d, p), q in zip(peaks_before.items(), square_peaks().values())}
    peak = max(peaks.values())
    step_s = statistics.median(times)
    achieved = flops / step_s
    print(f"align step: batch {batch_size} x {seconds:g} s, median {step_s * 1e3:.1f} ms/step "
          f"(min {min(times) * 1e3:.1f}), {achieved / 1e9:.1f} GFLOP/s")
    print(f"matmul peak ({peak_n}^3, {'the faster of f32 and bf16' if on_cpu else 'bf16'} in / f32 acc): "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"MFU = {achieved / peak:.3f} of the measured peak (target >= 0.5)")
    if on_cpu:
        # On CPUs with AVX512-BF16 the bf16 peak is about twice the f32 one (an AMD EPYC here:
        # 317-370 vs 166-191 GFLOP/s), so an f32 step's MFU against the faster peak halves.
        print("  peaks: " + ", ".join(f"{jnp.dtype(d).name} {p / 1e9:.1f} GFLOP/s (MFU {achieved / p:.3f})"
                                      for d, p in peaks.items()))
    from audiochat_jax.slices import CHIPS
    for key, chip in CHIPS.items():
        if not on_cpu and key in device.device_kind.lower().split():
            print(f"  = {achieved / chip.peak_bf16_flops:.3f} of the {chip.name} data-sheet "
                  f"{chip.peak_bf16_flops / 1e12:g} TFLOP/s dense bf16")
    if args.config:
        return
    # Is the model's GEMM shape the limit? Its thin matmuls (width 128-576), measured the same
    # way: on the 2-core dev machine they ran at 0.5-1.4x the square peak (f32; noisy), while
    # the step reached ~0.25 of it, so most of the gap is the step's non-matmul work (log-mel
    # FFT, conv stem, depthwise convs, CTC, norms, softmax, AdamW), not the GEMM shapes.
    tokens = batch_size * (int(seconds * 100) // 8 + 80)
    for name, (m, k, n) in {"LLM ffn [tokens,128]x[128,384]": (tokens, 128, 384),
                            "conformer ffn [frames,144]x[144,576]": (batch_size * int(seconds * 25), 144, 576)}.items():
        for dtype in dtypes:
            thin = matmul_peak(n, m=m, k=k, dtype=dtype)
            print(f"matmul {name} {jnp.dtype(dtype).name}: {thin / 1e9:.1f} GFLOP/s "
                  f"({thin / peak:.2f} of the peak); the step reaches {achieved / thin:.2f} of it")


if __name__ == "__main__":
    main()
