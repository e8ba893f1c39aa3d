"""Two versions of the mini align step in one process, run in turn: new / old step time.

    python bench/align_step_ab.py --old audiochat_jax/models/dropout.py:keep_mask
    python bench/align_step_ab.py --old audiochat_jax/models/dropout.py:keep_mask \\
        --old audiochat_jax/models/conformer.py:ConvSubsampling --base HEAD~1 --pairs 60

On the shared 2-core dev machine the same step measures ±10% from one process to the next,
which hides changes of a few percent (docs/performance.md, stop 23). Here both steps are
compiled in one process and alternated (A B, B A, A B, ...), so the machine's drift hits both
alike, and the median of the per-pair ratios is the answer.

"new" is the working tree. "old" is the working tree with each ``--old FILE:NAME`` (a
top-level function or class of that module) replaced, while the old step is built and traced,
by its definition in ``git show BASE:FILE``: the old source is executed in a copy of the
module's namespace and only the named objects are taken from it. Name every function or class
the change touched whose old version the step should run. A name that other modules import by
value (``from m import f``) is not swapped in them: name the function that looks it up at
call time instead (the module-level caller).

Both steps run the bench's mini task (bench/align_step.py: random mini-world-sized models,
batch 16 x 3 s). Prints each step's median and minimum, the median per-pair ratio with its
quartiles, and the largest loss difference (0 when the change keeps the numbers).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from audiochat_jax import huge_pages  # noqa: E402

if __name__ == "__main__":  # before the heavy imports, as bench/align_step.py
    huge_pages.reexec_with_huge_pages()

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import align_step  # noqa: E402  (bench/align_step.py)


def old_definitions(specs: list[str], base: str) -> dict:
    """``{(module, name): old object}`` for ``FILE:NAME`` specs, from ``git show base:FILE``."""
    found = {}
    for spec in specs:
        path, sep, name = spec.rpartition(":")
        if not sep or not path.endswith(".py") or not name:
            raise SystemExit(f"--old {spec}: write FILE.py:NAME, e.g. audiochat_jax/models/dropout.py:keep_mask")
        rel = os.path.relpath(os.path.abspath(path), ROOT)
        module = importlib.import_module(rel[:-3].replace(os.sep, "."))
        try:
            source = subprocess.run(["git", "show", f"{base}:{rel}"], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"--old {spec}: git show {base}:{rel} failed: {e.stderr.strip()}") from None
        namespace = dict(vars(module))
        exec(compile(source, f"{base}:{rel}", "exec"), namespace)
        if name not in namespace:
            raise SystemExit(f"--old {spec}: {rel} at {base} defines no {name!r}")
        if not hasattr(module, name):
            raise SystemExit(f"--old {spec}: the working tree's {rel} has no {name!r} to replace")
        found[(module, name)] = namespace[name]
    return found


@contextlib.contextmanager
def swapped(definitions: dict):
    """The old objects set on their modules inside the block, the new ones restored after."""
    new = {key: getattr(*key) for key in definitions}
    try:
        for (module, name), value in definitions.items():
            setattr(module, name, value)
        yield
    finally:
        for (module, name), value in new.items():
            setattr(module, name, value)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", action="append", default=[], metavar="FILE:NAME", required=True,
                   help="a top-level function or class to run in its --base version (repeatable)")
    p.add_argument("--base", default="HEAD", help="the git revision of the old version (default HEAD)")
    p.add_argument("--pairs", type=int, default=40, help="A/B pairs of steps to time (default 40)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="audio seconds per row (default 3)")
    args = p.parse_args()
    definitions = old_definitions(args.old, args.base)
    samples = int(args.seconds * 16000)
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        with swapped(definitions):
            print(f"old ({args.base}: {', '.join(args.old)}):", flush=True)
            runs["old"] = align_step.make_align_step(os.path.join(root, "old"), args.batch_size, samples)
        print("new (working tree):", flush=True)
        runs["new"] = align_step.make_align_step(os.path.join(root, "new"), args.batch_size, samples)
        for run, _ in runs.values():  # warm-up
            jax.block_until_ready(run())
        times = {k: [] for k in runs}
        losses = {k: [] for k in runs}
        order = list(runs)
        for i in range(args.pairs):
            for k in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                loss = jax.block_until_ready(runs[k][0]())
                times[k].append(time.perf_counter() - t0)
                losses[k].append(float(loss))
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.pairs} pairs", flush=True)
    for k in runs:
        print(f"{k}: median {statistics.median(times[k]) * 1e3:.1f} ms/step (min {min(times[k]) * 1e3:.1f}), "
              f"{runs[k][1] / 1e9:.2f} GFLOP/step in matmuls")
    ratios = [b / a for a, b in zip(times["old"], times["new"])]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    print(f"new / old step time: {q2:.3f} (median of {len(ratios)} pairs; quartiles {q1:.3f}-{q3:.3f})")
    print(f"largest loss difference over {args.pairs} steps: "
          f"{max(abs(a - b) for a, b in zip(losses['old'], losses['new'])):.3g}")


if __name__ == "__main__":
    main()
