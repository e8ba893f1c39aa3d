"""Entry points rerun themselves with glibc's huge-page tunable (audiochat_jax/huge_pages.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from audiochat_jax import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_235 = pytest.mark.skipif(not (sys.platform == "linux" and huge_pages._glibc_has_hugetlb()),
                               reason="glibc.malloc.hugetlb needs Linux with glibc >= 2.35")


@glibc_235
def test_environ_adds_the_tunable_only_where_it_helps():
    env = huge_pages.huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"}, mode="madvise")
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "1"}
    assert huge_pages.huge_pages_environ({}, mode="madvise") == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert huge_pages.enabled(env) and not huge_pages.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    # Already huge (always), no THP (never), already set, or opted out: nothing to do.
    for environ, mode in (({}, "always"), ({}, "never"), ({}, None),
                          ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise"),
                          ({"AUDIOCHAT_HUGE_PAGES": "0"}, "madvise")):
        assert huge_pages.huge_pages_environ(environ, mode=mode or "unknown") is None, (environ, mode)


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(str(path)) == "madvise"
    assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from audiochat_jax import huge_pages
    print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
    if __name__ == "__main__":
        huge_pages.reexec_with_huge_pages(mode="madvise")
    print("main", os.getpid(), sys.flags.optimize, sys.argv[1:], os.environ.get("GLIBC_TUNABLES", ""))
""")


def _run(script, env):
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-O", str(script), "a", "--b=1"], env=env,
                         capture_output=True, text=True, check=True)
    return [line.split(" ", 2) for line in out.stdout.splitlines()]


@glibc_235
def test_reexec_reruns_the_same_command_in_the_same_process_with_the_tunable(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.format(repo=REPO))
    lines = _run(script, {"GLIBC_TUNABLES": None, "AUDIOCHAT_HUGE_PAGES": None})
    assert [line[0] for line in lines] == ["start", "start", "main"]
    assert len({line[1] for line in lines}) == 1  # execve: same PID
    assert lines[0][2] == "" and lines[1][2] == "glibc.malloc.hugetlb=1"
    assert lines[2][2] == "1 ['a', '--b=1'] glibc.malloc.hugetlb=1"  # -O and the arguments survive
    # Opted out: runs once, as started.
    lines = _run(script, {"GLIBC_TUNABLES": None, "AUDIOCHAT_HUGE_PAGES": "0"})
    assert [line[0] for line in lines] == ["start", "main"] and lines[1][2] == "1 ['a', '--b=1'] "


ALLOCATE = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 256 << 20  # glibc maps it fresh, as XLA:CPU's temporaries (numpy would madvise itself)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(size), 1, size)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@glibc_235
@pytest.mark.skipif(huge_pages.thp_mode() != "madvise", reason="the kernel's THP mode is not madvise")
def test_the_tunable_puts_a_large_allocation_in_huge_pages():
    def faults(tunables):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env.update({"GLIBC_TUNABLES": tunables} if tunables else {})
        out = subprocess.run([sys.executable, "-c", ALLOCATE], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout)
    small, huge = faults(""), faults("glibc.malloc.hugetlb=1")
    assert small > 60_000  # one fault per 4 KiB page
    assert huge < small / 20, (small, huge)  # 2 MiB pages
