"""`python -m audiochat_jax.transcribe --ckpt DIR AUDIO...`: CTC transcripts from a CTC model
directory (conformer, or wav2vec2/HuBERT with a CTC head).

Prints ``FILE<TAB>TRANSCRIPT`` per file, in input order (``--json``: one JSON list of
``{"file", "text", "error"}``). A file that cannot be read (missing, not audio, empty,
truncated, NaN, too long; audio/io.py names the problem) is reported on stderr — or with
its ``error`` in the JSON — while the other files are still transcribed; the exit status is
1 when any file failed.

Batching: files are sorted by length and run ``--batch_size`` at a time; each batch is
padded to a multiple of ``--bucket_seconds`` and to the full batch size, so the jitted
features + encoder compile once per bucket, not per file (inference/transcriber.py).

``--dump_logits FILE.npz`` saves, per transcribed file ``i``, ``log_probs_{i}``
``[out_frames_i, vocab]`` (CTC log-probabilities over valid frames only) plus ``files``,
``lengths`` (out_frames per file, -1 for failed files) and ``blank_id``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from audiochat_jax.audio.io import DEFAULT_MAX_SECONDS
from audiochat_jax.inference.transcriber import transcribe_files
from audiochat_jax.text.char_vocab import CharVocab


def _dump(path: str, results: list[dict[str, Any]], blank_id: int) -> None:
    arrays = {f"log_probs_{i}": r["log_probs"] for i, r in enumerate(results) if r["log_probs"] is not None}
    lengths = [len(r["log_probs"]) if r["log_probs"] is not None else -1 for r in results]
    np.savez(path, files=np.array([r["file"] for r in results]), lengths=np.array(lengths, np.int32),
             blank_id=np.int32(blank_id), **arrays)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audiochat_jax.transcribe",
        description="Transcribe audio files (WAV/FLAC, any rate, mono or stereo) with a CTC model "
                    "directory: conformer_ctc or wav2vec2 with a CTC head (from `python -m audiochat_jax.convert` "
                    "or the ctc training stage).")
    parser.add_argument("--ckpt", required=True, help="CTC model directory (conformer_ctc, or wav2vec2 with a CTC head)")
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {file, text, error}")
    parser.add_argument("--dump_logits", metavar="FILE.npz",
                        help="save per-file CTC log-probs (valid frames) and output lengths")
    parser.add_argument("--batch_size", type=int, default=8, help="files per forward pass (default 8)")
    parser.add_argument("--bucket_seconds", type=float, default=2.0,
                        help="pad batches to a multiple of this duration to bound recompiles (default 2)")
    parser.add_argument("--max_seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"refuse longer files (default {DEFAULT_MAX_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    try:
        results = transcribe_files(args.ckpt, args.audio, batch_size=args.batch_size,
                                   bucket_seconds=args.bucket_seconds, max_seconds=args.max_seconds)
    except (FileNotFoundError, ValueError) as e:  # the model directory itself is unusable
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dump_logits:
        _dump(args.dump_logits, results, _blank_id(args.ckpt))
    failed = [r for r in results if r["error"]]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("file", "text", "error")} for r in results], indent=1))
    else:
        for r in results:
            if r["error"] is None:
                print(f"{r['file']}\t{r['text']}")
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _blank_id(ckpt: str) -> int:
    from audiochat_jax.models.model_dir import read_model_config
    return CharVocab.from_dict(read_model_config(ckpt)["vocab"]).blank_id


if __name__ == "__main__":
    sys.exit(main())
