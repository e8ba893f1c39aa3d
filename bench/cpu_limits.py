"""What bounds the CPU ratios: single ops at the models' own shapes, jitted JAX against the
same op in PyTorch, interleaved in one process, beside this machine's memory bandwidth.

    python bench/cpu_limits.py            # ~2 min on 2 cores

* **bfloat16 dots**: XLA:CPU runs a bfloat16 dot on its bf16 kernels only when the result
  is float32 (``preferred_element_type``); with a bfloat16 result it is a generic loop
  (the ``bf16->bf16`` rows), which is why models/precision.py casts the float32 result.
* **Prefill** is a chain of dots of 256 rows (the prompt) against the layer weights; compare
  their rate with the model's (bench/llm.py prints it) to see how much of a layer is not
  matmul.
* **Decode** is a matrix-vector product per weight: every weight byte is read once per
  token, so tokens/s is bounded by memory bandwidth / model bytes in both frameworks; the
  bench prints a float32 matrix-vector product's GB/s beside a plain array copy's.
* **Mini shapes** (d=128-576, the mini align step and conformer): small dots, where the
  float32 rates of the two frameworks and the cost of casting to bfloat16 decide the step.

docs/performance.md ("What limits the CPU") has one run's table and what it implies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import protocol  # noqa: E402

# (rows, in, out): LLM prefill 8 x d=1024 at 256 tokens; its decode; the mini shapes.
DOTS = [("prefill ffn [256,1024]x[1024,2816]", 256, 1024, 2816),
        ("prefill attn [256,1024]x[1024,1024]", 256, 1024, 1024),
        ("decode ffn [1,1024]x[1024,2816]", 1, 1024, 2816),
        ("decode head [1,1024]x[1024,32000]", 1, 1024, 32000),
        ("mini conformer [1200,144]x[144,576]", 1200, 144, 576),
        ("mini LLM [800,128]x[128,384]", 800, 128, 384)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--reps", type=int, default=20, help="calls per timed run")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    protocol.setup_torch_threads()
    before = protocol.load()
    print(protocol.machine_line())
    rng = np.random.default_rng(0)
    out = {}

    def reps(fn):
        def run():
            for _ in range(args.reps):
                r = fn()
            return r
        return run

    for name, m, k, n in DOTS:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flops = 2 * m * k * n * args.reps
        row = {}
        for dtype, short, result in (("float32", "f32", jnp.float32), ("bfloat16", "bf16->f32", jnp.float32),
                                     ("bfloat16", "bf16->bf16", None)):
            x, w = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            f = jax.jit(lambda p, q, result=result: jnp.matmul(p, q, preferred_element_type=result))
            pairs = protocol.interleave(reps(lambda: f(x, w).block_until_ready()), reps(lambda: torch.mm(ta, tb)),
                                        args.pairs)
            row[short] = pairs
            print(pairs.line(f"{name} jax {short} vs torch f32", work=flops / 1e9, unit=" GF/s"))
        if m == 1:  # bytes, not FLOPs, bound a matrix-vector product
            gbs = 4 * k * n * args.reps / 1e9
            print(f"{'':24s} float32 weights read at: jax {gbs / statistics.median(row['f32'].ours):.1f} GB/s, "
                  f"torch {gbs / statistics.median(row['f32'].peer):.1f} GB/s")
        out[name] = row
    big = np.ones(256 * 2 ** 20 // 4, np.float32)  # 256 MiB, far beyond the caches
    dst = np.empty_like(big)
    copy = protocol.median_seconds(lambda: np.copyto(dst, big), reps=5)
    out["copy_gbs"] = 2 * big.nbytes / copy / 1e9  # read + write
    print(f"memory bandwidth (numpy copy of 256 MiB, read + write): {out['copy_gbs']:.1f} GB/s")
    out["peaks"] = protocol.matmul_peaks()
    print(protocol.peaks_line(out["peaks"]))
    print(protocol.load_line(before))
    return out


if __name__ == "__main__":
    main()
