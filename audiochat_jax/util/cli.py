"""The command-line entry points' shared start: absl flags parsed, no stray arguments, quiet
libraries, and an error that names the problem instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable


def absl_main(body: Callable[[], None], argv=None, errors: tuple = (ValueError, FileNotFoundError)) -> None:
    """``app.run`` a command whose flags are defined: ``body()`` runs after the flags are
    parsed; an exception in ``errors`` exits with ``error: <message>`` (its message names the
    field or file and the fix; ``--verbosity=0`` shows the traceback instead)."""
    from absl import app, flags, logging

    def _main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        verbose = flags.FLAGS["verbosity"].present
        if not verbose:
            # Our commands print their own progress; orbax's per-save INFO lines would drown it.
            logging.set_verbosity(logging.WARNING)
        try:
            body()
        except errors as e:
            if verbose:
                raise
            sys.exit(f"error: {e}")

    app.run(_main, argv=argv)
