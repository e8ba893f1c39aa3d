"""Transparent huge pages for the host memory XLA:CPU allocates on every step.

XLA:CPU allocates an executable's temporaries with ``malloc`` on every run: 348 MiB for the
mini align step (batch 16 x 3 s). glibc serves an allocation that large with a fresh ``mmap``
and gives it back with ``munmap``, so every step faults in and zero-fills new 4 KiB pages:
92k page faults a step, and about a quarter of the step's CPU time was the kernel's
(docs/performance.md, *Host memory*). With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) glibc marks those regions ``MADV_HUGEPAGE``, so where the kernel's
transparent huge pages are in ``madvise`` mode they come in 2 MiB pages: about 370 faults a
step (and, likely, fewer TLB misses). On the 2-core dev CPU the mini align step took 0.71x
the time, the 7B config's step (LLM cut to one layer) 0.67x (bench/huge_pages.py).

glibc reads its tunables only when a process starts, so the command-line entry points call
``reexec_with_huge_pages()`` first: it runs the same command again in the same process
(``execve``, same PID) with the tunable added. It does nothing where it cannot help: not
Linux/glibc >= 2.35, transparent huge pages ``always`` (already huge) or ``never``, the
tunable already set, ``AUDIOCHAT_HUGE_PAGES=0`` in the environment (the opt-out), or a
command that cannot be run twice (``python -c`` / a script on stdin).
"""
from __future__ import annotations

import os
import platform
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "AUDIOCHAT_HUGE_PAGES"  # "0": leave the process as it was started
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), or None."""
    try:
        with open(path) as f:
            match = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def _glibc_has_hugetlb() -> bool:
    libc, version = platform.libc_ver()
    try:
        return libc == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def enabled(environ=None) -> bool:
    """Whether ``environ`` (default ``os.environ``) asks glibc for huge pages."""
    return f"{TUNABLE}=1" in (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")


def huge_pages_environ(environ=None, mode: str | None = None) -> dict[str, str] | None:
    """``environ`` (default ``os.environ``) with ``glibc.malloc.hugetlb=1`` added to
    ``GLIBC_TUNABLES``, or None where it would change nothing (see the module docstring).
    ``mode`` overrides the kernel's THP mode (tests)."""
    environ = dict(os.environ if environ is None else environ)
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or TUNABLE in tunables:
        return None
    if sys.platform != "linux" or not _glibc_has_hugetlb():
        return None
    if (mode or thp_mode()) != "madvise":
        return None
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, f"{TUNABLE}=1")))
    return environ


def reexec_with_huge_pages(mode: str | None = None) -> None:
    """Runs this command again with glibc's huge-page tunable, where that helps; returns only
    where it does not. Call it first in an entry point's ``if __name__ == "__main__":``
    block, never from code a test or a library calls (it replaces the process). ``mode``
    overrides the kernel's THP mode (tests)."""
    if sys.argv[:1] in ([], [""], ["-c"], ["-"]):  # interactive, -c or stdin: cannot rerun
        return
    environ = huge_pages_environ(mode=mode)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
