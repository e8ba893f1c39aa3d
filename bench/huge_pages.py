"""The align step with and without glibc's transparent huge pages, in turn (CPU).

    python bench/huge_pages.py                    # mini step, batch 16 x 3 s, 3 rounds of 8 steps
    python bench/huge_pages.py --rounds 4 --steps 6 -- --batch_size 8 --seconds 2

Runs ``bench/align_step.py`` (arguments after ``--`` go to it) in fresh processes, alternately
with ``AUDIOCHAT_HUGE_PAGES=0`` (glibc's default: XLA:CPU's per-step temporaries come in new
4 KiB pages every step) and with the project's default (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
audiochat_jax/huge_pages.py), and prints each run's median step time and page faults per step,
then the ratio of the medians over the rounds. Each round is one process of each kind, run
back to back: the machine is shared and noisy, so read the rounds as pairs.

Measured on the 2-core dev CPU (AMD EPYC, THP ``madvise``), mini step, batch 16 x 3 s: see
docs/performance.md, *Host memory*.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from audiochat_jax import huge_pages  # noqa: E402

STEP = re.compile(r"median ([\d.]+) ms/step")
FAULTS = re.compile(r"host memory: (\d+) page faults per step; glibc huge pages (on|off)")


def run_bench(huge: bool, steps: int, extra: list[str]) -> tuple[float, int, str]:
    """``(median ms/step, page faults per step, 'on'/'off')`` of one bench/align_step.py run."""
    env = dict(os.environ)
    if not huge:
        env.pop("GLIBC_TUNABLES", None)
    env[huge_pages.OPT_OUT] = "1" if huge else "0"
    cmd = [sys.executable, os.path.join(HERE, "align_step.py"), "--steps", str(steps), *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    step, faults = STEP.search(out.stdout), FAULTS.search(out.stdout)
    if out.returncode or not step or not faults:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return float(step.group(1)), int(faults.group(1)), faults.group(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="pairs of runs (one of each kind per round)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("extra", nargs="*", help="after --: arguments for bench/align_step.py")
    args = p.parse_args()
    if huge_pages.huge_pages_environ({}) is None:
        print(f"note: glibc's huge-page tunable changes nothing here (kernel THP mode "
              f"{huge_pages.thp_mode()}, or not Linux/glibc >= 2.35): both kinds run the same way")
    medians = {"off": [], "on": []}
    for r in range(args.rounds):
        for huge in (False, True):
            ms, faults, state = run_bench(huge, args.steps, args.extra)
            medians["on" if huge else "off"].append(ms)
            print(f"round {r + 1}: huge pages {state:3s}  {ms:7.1f} ms/step  {faults:6d} page faults/step", flush=True)
    off, on = statistics.median(medians["off"]), statistics.median(medians["on"])
    faster = sum(a < b for a, b in zip(medians["on"], medians["off"]))
    print(f"median over rounds: off {off:.1f} ms/step, on {on:.1f} ms/step; "
          f"on / off = {on / off:.3f} (on faster in {faster} of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
