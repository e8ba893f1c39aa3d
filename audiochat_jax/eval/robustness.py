"""Robustness sweeps: the same spoken QA items under one changed condition at a time.

* ``snr``     white noise at fixed SNRs (audio/augment.add_noise: exact per-utterance SNR),
* ``voices``  seen vs held-out voices (fresh renditions, eval/render.py),
* ``rate``    speaking rate in words per minute (fresh renditions),
* ``length``  utterance duration bins of the base rendition (quantiles).

Each condition gives a list of waveforms for the same items; ``run_sweep`` measures them with
one function (spoken-QA accuracy end to end and through the cascade, CTC WER), so the
conditions differ only in the audio.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.audio.augment import add_noise

Measure = Callable[[Sequence[np.ndarray], Sequence[int]], dict]


def with_noise(waves: Sequence[np.ndarray], snr_db: float, seed: int = 0) -> list[np.ndarray]:
    """Each waveform plus white noise at exactly ``snr_db`` (``inf``: unchanged)."""
    if not np.isfinite(snr_db):
        return [np.asarray(w, np.float32) for w in waves]
    n = max(len(w) for w in waves)
    batch = np.zeros((len(waves), n), np.float32)
    lengths = np.array([len(w) for w in waves], np.int32)
    for i, w in enumerate(waves):
        batch[i, :len(w)] = w
    noisy = np.asarray(add_noise(jax.random.key(seed), jnp.asarray(batch), jnp.asarray(lengths), float(snr_db)))
    return [noisy[i, :lengths[i]] for i in range(len(waves))]


def length_bins(seconds: Sequence[float], n_bins: int) -> list[tuple[str, list[int]]]:
    """Item indices split into ``n_bins`` duration quantile bins, labelled "a-b s"."""
    seconds = np.asarray(seconds, np.float64)
    if len(seconds) == 0 or n_bins < 1:
        return []
    order = np.argsort(seconds, kind="stable")
    out = []
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            lo, hi = seconds[chunk].min(), seconds[chunk].max()
            out.append((f"{lo:.1f}-{hi:.1f} s", sorted(chunk.tolist())))
    return out


def run_sweep(conditions: Mapping[str, tuple[Sequence[np.ndarray], Sequence[int]]], measure: Measure) -> dict:
    """conditions: label -> (waveforms, item indices they belong to) -> {label: measure(...)}."""
    return {label: measure(waves, idx) for label, (waves, idx) in conditions.items()}
