"""``python -m audiochat_jax.responses --config configs/X.py[:arg] [--config.responses.key=value ...]``

The frozen LLM answers every transcript of a speech split; the answers (exact token ids)
are the modal-invariance targets of the alignment stage. Sharded over all devices/hosts,
resumable (rerun the same command: finished shards are skipped), and the output directory
records which model, tokenizer, prompt and decoding settings wrote it. Reads only
``config.responses`` (fields: audiochat_jax/data/responses.py ``ResponsesConfig``).
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with a `responses` section, e.g. configs/responses_example.py; "
    "override fields with --config.responses.key=value.", lock_config=True)
_MAX_SHARDS = flags.DEFINE_integer(
    "max_shards", None, "Compute at most this many shards, then stop (rerun to continue).")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from audiochat_jax.data import responses  # after flag parsing: --help stays fast

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the progress bar
    if "responses" not in _CONFIG.value:
        sys.exit(f"error: the config has no `responses` section (keys: {sorted(_CONFIG.value)})")
    try:
        config = responses.ResponsesConfig.from_dict(_CONFIG.value.responses.to_dict())
        summary = responses.run(config, max_shards=_MAX_SHARDS.value)
    except (ValueError, FileNotFoundError) as e:  # the message names the field/file and the fix
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    app.run(main)
