"""New eval audio: espeak-ng renditions of eval sentences, by seen or held-out voices.

The eval speaks its items with a fresh seed (so new voice/rate/pitch draws even for a voice
heard in training), through data/synth.py's own planner and renderer: ``voices="unseen"``
draws from the voices that never speak a training utterance, ``"seen"`` from the training
pool; ``rate`` fixes the speaking rate (words per minute) for the rate sweep.

Renders are cached in ``cache_dir`` as ``.npz`` keyed by a hash of (texts, settings, espeak
version), so a rerun of the evaluation does not synthesise again.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from typing import Any, Mapping, Sequence

import numpy as np

from audiochat_jax.audio import espeak
from audiochat_jax.audio.io import int16_to_float
from audiochat_jax.data import synth

VOICE_SPLITS = {"seen": "test_seen", "unseen": "test_unseen"}


def render(texts: Sequence[str], synth_config: Mapping[str, Any], *, voices: str = "unseen",
           rate: int | None = None, cache_dir: str | None = None, workers: int = 1
           ) -> tuple[list[np.ndarray], list[dict]]:
    """-> (float32 waveforms [samples] at 16 kHz, per-utterance {voice, rate, pitch, seconds})."""
    if voices not in VOICE_SPLITS:
        raise ValueError(f"render: voices={voices!r}; use one of {sorted(VOICE_SPLITS)}")
    cfg = dict(synth_config)
    cfg["noise_prob"] = 0.0  # noise is the SNR sweep's job, at exact levels
    if rate is not None:
        lo, hi = espeak.RATE_RANGE
        if not lo <= rate <= hi:
            raise ValueError(f"render: rate={rate} wpm is outside espeak's [{lo}, {hi}]")
        cfg["rate"] = (rate, rate)
    config = synth.SynthConfig.from_dict(cfg)
    split = VOICE_SPLITS[voices]
    jobs = synth.plan([{"text": t, "transcript": t, "split": split, "id": f"eval-{i:05d}"}
                       for i, t in enumerate(texts)], config)
    key = hashlib.sha256(json.dumps([jobs, espeak.version()], sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{voices}-{rate or 'any'}-{key}.npz") if cache_dir else None
    meta = [{"voice": j["voice"], "rate": j["rate"], "pitch": j["pitch"]} for j in jobs]
    if path and os.path.exists(path):
        with np.load(path) as z:
            audio, offsets = z["audio"], z["offsets"]
    else:
        if workers > 1 and len(jobs) > 8:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                records = pool.map(synth.render, jobs, chunksize=4)
        else:
            records = [synth.render(j) for j in jobs]
        offsets = np.cumsum([0] + [len(r["audio"]) for r in records])
        audio = np.concatenate([r["audio"] for r in records]) if records else np.zeros((0,), np.int16)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = path + ".tmp.npz"
            np.savez(tmp, audio=audio, offsets=offsets)
            os.replace(tmp, path)
    waves = [int16_to_float(audio[offsets[i]:offsets[i + 1]]) for i in range(len(jobs))]
    for m, w in zip(meta, waves):
        m["seconds"] = round(len(w) / 16000, 3)
    return waves, meta
