"""CTC transcription with a CTC model directory (conformer_ctc, or wav2vec2 with a CTC head).

    t = Transcriber("work/mini/ctc/model")
    log_probs, lengths = t.log_probs([wave0, wave1], batch_rows=8, bucket_samples=32000)
    texts = t.decode(log_probs, lengths)
    results = transcribe_files("work/mini/ctc/model", ["a.wav", "b.flac"])  # per file: text or error

Batching: files are sorted by length and run ``batch_size`` at a time; each batch is padded
to a multiple of ``bucket_seconds`` and to the full batch size, so the jitted features +
encoder compile once per bucket, not per file.
"""
from __future__ import annotations

import functools
import math
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
