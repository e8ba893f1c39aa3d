"""How every bench here measures: ours and the peer interleaved in one process, the machine's
load and its matmul peaks printed in the same run.

    pairs = interleave(ours_fn, peer_fn, pairs=5)     # A B, B A, A B, ... after one warm-up each
    print(pairs.line("prefill tok/s", work=batch * length))
    print(machine_line()); print(load_line(before))

A ratio is the median of per-pair ratios (peer time / our time: > 1 means ours is faster),
with its min and max over the pairs; each pair runs both sides back to back, in alternating
order, so a load change hits both. A run whose 1-minute load average exceeded the cores it
may use says so beside its result: such a ratio is not a result.

PyTorch's OpenMP threads are told to sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, set here
before torch is imported): with its default busy-waiting, any other busy thread on the
machine (XLA's between our runs, another process) made the eager step up to 30x slower on 2
cores, a collapse that says nothing about either framework.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see above)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cpu_model() -> tuple[str, list[str]]:
    """(model name, the flags that decide matmul speed) from /proc/cpuinfo."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
                             if x in have]
                    break
    except OSError:
        pass
    return name, flags


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def machine_line() -> str:
    name, flags = cpu_model()
    v = versions()
    return (f"machine: {name} ({', '.join(flags) or 'no AVX flags read'}), {cores()} cores usable; "
            + ", ".join(f"{k} {x}" for k, x in v.items()) + f"; {datetime.date.today().isoformat()}")


def load_line(before: float) -> str:
    after, n = load(), cores()
    flag = "" if max(before, after) <= n else f"  ** LOADED: load > {n} cores, the ratios are not a result **"
    return f"load average (1 min): {before:.2f} before, {after:.2f} after, {n} cores{flag}"


@dataclasses.dataclass
class Pairs:
    ours: list[float]    # seconds per run of ours, in pair order
    peer: list[float]

    @property
    def ratios(self) -> list[float]:
        return [p / o for o, p in zip(self.ours, self.peer)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def line(self, what: str, work: float = 1.0, unit: str = "/s") -> str:
        """``what``: ours X, peer Y (median rates of ``work`` per run), ratio median [min, max]."""
        o, p = work / statistics.median(self.ours), work / statistics.median(self.peer)
        return (f"{what:24s} ours {o:10.1f}{unit}  peer {p:10.1f}{unit}  ratio {self.ratio:5.2f}x "
                f"[{min(self.ratios):.2f}, {max(self.ratios):.2f}] over {len(self.ours)} pairs")


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(ours: Callable[[], object], peer: Callable[[], object], pairs: int = 5,
               warmup: int = 1) -> Pairs:
    """Times ``ours`` and ``peer`` (each blocks until its work is done) in ``pairs`` pairs,
    alternating which goes first, after ``warmup`` untimed runs of each."""
    for _ in range(warmup):
        ours()
        peer()
    a, b = [], []
    for i in range(pairs):
        if i % 2 == 0:
            a.append(_timed(ours))
            b.append(_timed(peer))
        else:
            b.append(_timed(peer))
            a.append(_timed(ours))
    return Pairs(a, b)


def median_seconds(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(reps))


def matmul_peaks(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """FLOP/s of a square n^3 matmul: jitted JAX float32, JAX bfloat16 inputs with float32
    accumulation, and PyTorch float32 (when torch is installed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    out = {}
    for name, dtype in (("jax f32", jnp.float32), ("jax bf16->f32", jnp.bfloat16)):
        x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        f = jax.jit(lambda p, q: jnp.matmul(p, q, preferred_element_type=jnp.float32))
        out[name] = 2 * n ** 3 / median_seconds(lambda: f(x, y).block_until_ready(), reps)
    try:
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch f32"] = 2 * n ** 3 / median_seconds(lambda: torch.mm(ta, tb), reps)
    except ImportError:
        pass
    return out


def peaks_line(peaks: dict[str, float]) -> str:
    return "matmul peaks (2048^3, same run): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())


def setup_torch_threads() -> int:
    """PyTorch gets every core this process may use (XLA's CPU client takes them all)."""
    import torch
    torch.set_num_threads(cores())
    return cores()
