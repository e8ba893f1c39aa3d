"""``python -m audiochat_jax.train --config configs/X.py[:arg] --workdir DIR [--config.key=value ...]``

Trains the task named by ``config.task`` (train/tasks.py) with the shared loop (loop.py).
Rerunning the same command resumes from DIR's latest checkpoint; SIGTERM saves and exits 0.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/smoke_toy.py (optionally :arg); override fields "
    "with --config.key=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints/, tensorboard/ and the exported model/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from audiochat_jax.train import loop  # after flag parsing: --help stays fast

    # The trainer prints its own progress; orbax's per-save INFO lines would drown it
    # (pass --verbosity=0 to see them).
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    try:
        result = loop.train(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, loop.NonFiniteError) as e:
        # Config and input errors name the field/file and the fix; a traceback would bury that.
        if flags.FLAGS["verbosity"].present:
            raise
        sys.exit(f"error: {e}\n(pass --verbosity=0 to see the traceback)")
    print(f"finished: {result['status']} at step {result['step']}", flush=True)


if __name__ == "__main__":
    app.run(main)
