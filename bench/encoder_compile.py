"""Compile time of the conformer's CTC train step: scanned blocks vs unrolled, same config.

    python bench/encoder_compile.py                          # paper conformer, batch 8 x 10 s (~3 min on 2 cores)
    python bench/encoder_compile.py --variant nemo_small --layers 8
    python bench/encoder_compile.py --batch 2 --seconds 4 --steps 5   # + step time and memory, run

Builds configs/conformer_paper.py's encoder (``--variant``), then lowers and compiles the
jitted forward + backward of its CTC loss in train mode (dropout, batch-norm statistics,
the config's remat) on abstract inputs (nothing is allocated), once with the blocks
unrolled and once scanned (``scan_layers``: one block compiled instead of n). Prints both
times, the ratio, and a check of the MFU FLOP count: XLA counts a scanned body once, so
the scanned count plus ``conformer.scanned_flops_uncounted`` should equal the unrolled count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from audiochat_jax.models import conformer, ctc  # noqa: E402


def paper_config(variant: str, layers: int | None) -> conformer.ConformerConfig:
    from audiochat_jax.train import config_files
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "conformer_paper.py")
    fields = config_files.load(f"{path}:{variant}").encoder.to_dict()
    if layers:
        fields["n_layers"] = layers
    return conformer.ConformerConfig.from_dict(fields)


def compile_train_step(cfg: conformer.ConformerConfig, batch: int, frames: int, labels: int = 64):
    """``(lower_s, compile_s, xla_flops, compiled)`` of jit(grad(CTC loss)) in train mode,
    abstract inputs; ``compiled(params, stats, features, lengths, targets, rng)``."""
    model = conformer.ConformerCTC(cfg)
    feats = jax.ShapeDtypeStruct((batch, frames, cfg.n_mels), jnp.float32)
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variables = jax.eval_shape(lambda: conformer.init_variables(cfg, jax.random.key(0)))
    targets = jax.ShapeDtypeStruct((batch, labels), jnp.int32)

    def loss(params, stats, x, n, y, rng):
        (logits, out_len), new = model.apply({"params": params, **stats}, x, n, train=True,
                                             mutable=list(stats), rngs={"dropout": rng})
        nll = ctc.ctc_loss(logits, out_len, y, jnp.full(y.shape[:1], y.shape[1]), cfg.vocab_size - 1)
        return nll.mean(), new

    step = jax.jit(jax.grad(loss, has_aux=True))
    stats = {k: v for k, v in variables.items() if k != "params"}
    t0 = time.perf_counter()
    lowered = step.lower(variables["params"], stats, feats, lengths, targets, jax.random.key(0))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return t1 - t0, t2 - t1, float(cost["flops"]), compiled


def time_train_step(compiled, cfg: conformer.ConformerConfig, batch: int, frames: int, steps: int,
                    labels: int = 64) -> tuple[float, float]:
    """``(median seconds per step, temporaries in bytes)`` of ``compiled`` run on random real
    inputs and freshly initialised variables, ``steps`` times after one warm-up."""
    variables = conformer.init_variables(cfg, jax.random.key(0))
    stats = {k: v for k, v in variables.items() if k != "params"}
    rng = np.random.default_rng(0)
    args = (variables["params"], stats, jnp.asarray(rng.standard_normal((batch, frames, cfg.n_mels)), jnp.float32),
            jnp.full((batch,), frames, jnp.int32), jnp.asarray(rng.integers(0, cfg.vocab_size - 1, (batch, labels)),
                                                               jnp.int32))
    jax.block_until_ready(compiled(*args, jax.random.key(0)))
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compiled.memory_analysis().temp_size_in_bytes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="paper", help="configs/conformer_paper.py variant: paper | nemo_small")
    p.add_argument("--layers", type=int, default=0, help="override the number of blocks (0 = the config's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="audio per row (100 log-mel frames a second)")
    p.add_argument("--steps", type=int, default=0,
                   help="also run each compiled step this many times on real arrays (after a warm-up) and "
                        "print its median time and XLA's temporaries (paper sizes: ~10 s a step on 2 cores)")
    args = p.parse_args()
    cfg = paper_config(args.variant, args.layers or None)
    frames = int(args.seconds * 100)
    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}; conformer {args.variant}: d={cfg.d_model} "
          f"x {cfg.n_layers} blocks, {cfg.dtype} compute, remat {cfg.remat_policy!r}; CTC train step, "
          f"batch {args.batch} x {args.seconds:g} s", flush=True)
    results, runs = {}, {}
    for scan in (False, True):
        c = cfg.replace(scan_layers=scan)
        lower_s, compile_s, flops, compiled = compile_train_step(c, args.batch, frames)
        results[scan] = (lower_s, compile_s, flops)
        print(f"  {'scanned' if scan else 'unrolled'}: lowered in {lower_s:.1f} s, compiled in {compile_s:.1f} s; "
              f"XLA counts {flops / 1e9:.1f} GFLOP", flush=True)
        if args.steps:
            step_s, temp = time_train_step(compiled, c, args.batch, frames, args.steps)
            runs[scan] = step_s
            print(f"    median step {step_s * 1e3:.0f} ms over {args.steps}; temporaries {temp / 2**20:.0f} MiB",
                  flush=True)
        del compiled
    (lu, cu, fu), (ls, cs, fs) = results[False], results[True]
    print(f"scanned / unrolled lower + compile time: {(ls + cs) / (lu + cu):.2f} "
          f"({ls + cs:.1f} s vs {lu + cu:.1f} s)")
    if runs:
        print(f"scanned / unrolled step time: {runs[True] / runs[False]:.2f} "
              f"({runs[True] * 1e3:.0f} ms vs {runs[False] * 1e3:.0f} ms)")
    scanned_cfg = cfg.replace(scan_layers=True)
    out_frames = int(conformer.subsampled_lengths(np.array([frames]), scanned_cfg)[0])
    missed = conformer.scanned_flops_uncounted(scanned_cfg, out_frames, args.batch, backward=True)
    print(f"FLOP count: scanned {fs / 1e9:.1f} + uncounted {missed / 1e9:.1f} = {(fs + missed) / 1e9:.1f} GFLOP "
          f"vs unrolled {fu / 1e9:.1f} ({(fs + missed - fu) / fu:+.1%})")


if __name__ == "__main__":
    main()
