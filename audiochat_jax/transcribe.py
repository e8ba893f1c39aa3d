"""`python -m audiochat_jax.transcribe --ckpt DIR AUDIO...`: CTC transcripts from a CTC model
directory (conformer, or wav2vec2/HuBERT with a CTC head).

Prints ``FILE<TAB>TRANSCRIPT`` per file, in input order (``--json``: one JSON list of
``{"file", "text", "error"}``). A file that cannot be read (missing, not audio, empty,
truncated, NaN, too long; audio/io.py names the problem) is reported on stderr — or with
its ``error`` in the JSON — while the other files are still transcribed; the exit status is
1 when any file failed.

Batching: files are sorted by length and run ``--batch-size`` at a time; each batch is
padded to a multiple of ``--bucket-seconds`` and to the full batch size, so the jitted
features + encoder compile once per bucket, not per file.

``--dump-logits FILE.npz`` saves, per transcribed file ``i``, ``log_probs_{i}``
``[out_frames_i, vocab]`` (CTC log-probabilities over valid frames only) plus ``files``,
``lengths`` (out_frames per file, -1 for failed files) and ``blank_id``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.audio.io import DEFAULT_MAX_SECONDS, AudioError, load_audio
from audiochat_jax.models import ctc, speech_llm
from audiochat_jax.text.char_vocab import CharVocab


class Transcriber:
    """A loaded CTC model directory (``conformer_ctc`` or ``wav2vec2`` with a CTC head, as the
    ctc task exports them): waveforms -> (log_probs, transcripts)."""

    def __init__(self, ckpt: str):
        self.config, self.variables, meta = speech_llm.read_encoder_dir(ckpt)
        for key in ("features", "vocab"):
            if key not in meta:
                raise ValueError(f"{ckpt}/config.json has no {key!r} entry: not a CTC model export "
                                 "(train one with the ctc task, or convert a *ForCTC checkpoint)")
        self.features = FeatureConfig.from_dict(meta["features"])
        self.vocab = CharVocab.from_dict(meta["vocab"])
        n_classes = speech_llm.ctc_classes(self.config)
        if self.vocab.size != n_classes:
            raise ValueError(f"{ckpt}/config.json: vocabulary has {self.vocab.size} classes but the model "
                             f"{n_classes}")
        model = speech_llm.ctc_model(self.config)
        features = self.features
        on_features = speech_llm.input_kind(self.config) == "features"

        @jax.jit
        def forward(variables, waves, lengths):
            # A conformer reads log-mels; a wav2vec2 encoder the waveform itself.
            inputs, in_lengths = log_mel(waves, lengths, features) if on_features else (waves, lengths)
            logits, out_lengths = model.apply(variables, inputs, in_lengths)
            return jax.nn.log_softmax(logits, axis=-1), out_lengths

        self._forward = functools.partial(forward, self.variables)

    def log_probs(self, waves: Sequence[np.ndarray], batch_rows: int | None = None,
                  bucket_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Float32 waveforms -> (log_probs [batch, out_frames, vocab], out_lengths [batch]).

        Pads to ``batch_rows`` rows (zero-length rows) and a multiple of ``bucket_samples``.
        """
        n = max(len(w) for w in waves)
        n = int(math.ceil(n / bucket_samples) * bucket_samples)
        rows = batch_rows or len(waves)
        batch = np.zeros((rows, n), np.float32)
        lengths = np.zeros((rows,), np.int32)
        for i, w in enumerate(waves):
            batch[i, :len(w)] = w
            lengths[i] = len(w)
        log_probs, out_lengths = self._forward(jnp.asarray(batch), jnp.asarray(lengths))
        return np.asarray(log_probs)[:len(waves)], np.asarray(out_lengths)[:len(waves)]

    def decode(self, log_probs: np.ndarray, out_lengths: np.ndarray) -> list[str]:
        ids = ctc.collapse(log_probs.argmax(-1), out_lengths, self.vocab.blank_id)
        return [self.vocab.decode(row) for row in ids]


def transcribe_files(ckpt: str, paths: Sequence[str], *, batch_size: int = 8, bucket_seconds: float = 2.0,
                     max_seconds: float = DEFAULT_MAX_SECONDS) -> list[dict[str, Any]]:
    """One result per path, in order: ``{"file", "text", "error", "log_probs"}`` (log_probs
    ``[out_frames, vocab]`` or None; text None and error set for unreadable files)."""
    model = Transcriber(ckpt)
    sr = model.features.sample_rate
    results: list[dict[str, Any]] = [{"file": p, "text": None, "error": None, "log_probs": None} for p in paths]
    waves = {}
    for i, path in enumerate(paths):
        try:
            waves[i] = load_audio(path, sr, max_seconds=max_seconds)
        except AudioError as e:
            results[i]["error"] = str(e)
    order = sorted(waves, key=lambda i: len(waves[i]))
    bucket = max(1, int(bucket_seconds * sr))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        log_probs, out_lengths = model.log_probs([waves[i] for i in idx], batch_size, bucket)
        for i, text, lp, n in zip(idx, model.decode(log_probs, out_lengths), log_probs, out_lengths):
            results[i]["text"] = text
            results[i]["log_probs"] = lp[:int(n)]
    return results


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
    parser.add_argument("--dump-logits", metavar="FILE.npz",
                        help="save per-file CTC log-probs (valid frames) and output lengths")
    parser.add_argument("--batch-size", type=int, default=8, help="files per forward pass (default 8)")
    parser.add_argument("--bucket-seconds", type=float, default=2.0,
                        help="pad batches to a multiple of this duration to bound recompiles (default 2)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"refuse longer files (default {DEFAULT_MAX_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
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
    from audiochat_jax.model_dir import read_model_config
    return CharVocab.from_dict(read_model_config(ckpt)["vocab"]).blank_id


if __name__ == "__main__":
    sys.exit(main())
