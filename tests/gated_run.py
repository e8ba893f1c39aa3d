"""The trainer CLI in a subprocess with gates, so a test can signal it at a known step.

    run = GatedRun(["--config", ..., "--workdir", w], gate_at=(9,))
    run.wait_for("GATE 9")      # the run is parked before fetching its 9th batch (steps 1-8 dispatched)
    run.proc.send_signal(signal.SIGTERM); run.release()
    rc, out = run.finish()

Before fetching batch ``k`` for each ``k`` in ``gate_at`` the child prints ``GATE k`` and waits
for a line on its stdin: where the run is when the signal arrives does not depend on timing.
A thread reads the child's stdout as it comes.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CLI = """
import os, sys
from audiochat_jax.train import tasks
gates = {int(x) for x in os.environ["AUDIOCHAT_TEST_GATES"].split(",") if x}
real, count = tasks.device_batch, [0]

def gated(batch, mesh):
    count[0] += 1
    if count[0] in gates:
        print(f"\\nGATE {count[0]}", flush=True)  # on a line of its own (a progress bar may not end one)
        sys.stdin.readline()
    return real(batch, mesh)

tasks.device_batch = gated
from absl import app
from audiochat_jax.train.__main__ import main
app.run(main)
"""


class GatedRun:
    def __init__(self, args, gate_at=(), timeout=900):
        env = dict(os.environ, PYTHONUNBUFFERED="1", AUDIOCHAT_TEST_GATES=",".join(map(str, gate_at)))
        self.proc = subprocess.Popen([sys.executable, "-c", _CLI, *args], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.timeout, self.seen, self.lines = timeout, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> list[str]:
        """Blocks until a line holding ``text``; returns every line so far."""
        while (line := self.lines.get(timeout=self.timeout)) is not None:
            self.seen.append(line)
            if text in line:
                return self.seen
        raise AssertionError(f"run ended (rc={self.proc.wait()}) before {text!r}:\n{''.join(self.seen)}")

    def release(self) -> None:
        """Lets a parked run go on."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str]:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=self.timeout)
        while (line := self.lines.get(timeout=60)) is not None:
            self.seen.append(line)
        return rc, "".join(self.seen)
