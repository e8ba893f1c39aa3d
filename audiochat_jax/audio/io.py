"""Decoding audio files (WAV, FLAC, anything libsndfile reads) into 16 kHz mono float32.

``load_audio(path)`` is the one entry point. What it does to a file, in order:

1. ``soundfile.info`` first, so an absurdly long file is refused before it is read.
2. Decode with libsndfile to float32 in [-1, 1] (integer PCM is scaled by 1/2**(bits-1)).
3. **Downmix**: more than one channel is averaged to mono (the mean of the channels, the
   convention of librosa's ``to_mono`` and of NeMo's ``channel_selector=None`` averaging).
4. **Resample**: any other rate is converted to ``sample_rate`` (16 kHz) with
   ``librosa.resample(res_type="soxr_hq")`` — band-limited, so nothing aliases into the
   speech band.

Each of these is refused with an ``AudioError`` that names the file, the problem and the
fix: a missing file, a file libsndfile cannot parse (not audio), zero samples, a file cut
short (a WAV whose RIFF header declares more bytes than the file holds, a FLAC whose
decoder loses sync or yields fewer samples than its STREAMINFO promises), NaN/inf samples
(float WAVs can carry them), shorter than ``min_seconds`` or longer than ``max_seconds``.

Also here: the int16 <-> float32 conventions the speech datasets use (their ``audio``
feature is int16 PCM at 16 kHz).
"""
from __future__ import annotations

import os
import struct
from typing import Union

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
# One 25 ms analysis window: shorter input has no complete feature frame.
DEFAULT_MIN_SECONDS = 0.025
# Utterance-level speech corpora (LibriSpeech <= 35 s, MLS <= 20 s) never come close; a
# longer file is almost certainly a whole recording passed by mistake.
DEFAULT_MAX_SECONDS = 600.0

PathLike = Union[str, os.PathLike]


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file, problem and fix."""

    def __init__(self, path: PathLike, problem: str, fix: str):
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM ``[samples]`` -> float32 in [-1, 1) (divide by 32768, libsndfile's scale)."""
    return np.asarray(pcm, np.int16).astype(np.float32) / 32768.0


def float_to_int16(wave: np.ndarray) -> np.ndarray:
    """float ``[samples]`` in [-1, 1] -> int16 PCM; out-of-range values are clipped, not wrapped."""
    wave = np.asarray(wave, np.float32)
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of ``[samples]`` float audio."""
    if orig_sr == target_sr:
        return np.asarray(wave, np.float32)
    import librosa  # imported lazily: librosa's import pulls in numba and costs ~1 s
    return librosa.resample(np.asarray(wave, np.float32), orig_sr=orig_sr, target_sr=target_sr,
                            res_type="soxr_hq").astype(np.float32)


def downmix(wave: np.ndarray) -> np.ndarray:
    """``[samples, channels]`` -> ``[samples]`` by averaging the channels."""
    wave = np.asarray(wave, np.float32)
    return wave if wave.ndim == 1 else wave.mean(axis=1, dtype=np.float32)


def _riff_truncation(path: PathLike) -> str | None:
    """For RIFF/WAVE files: a problem string if the header promises more bytes than exist.

    libsndfile silently shortens a truncated WAV to what is on disk, so the cut has to be
    detected from the header: the RIFF chunk size (bytes 4..8) plus the 8-byte preamble is
    the file size the writer finished with. Streaming writers leave 0 or 0xFFFFFFFF there
    (size unknown); those are not judged.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        f.seek(0, os.SEEK_END)
        actual = f.tell()
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    declared = struct.unpack("<I", head[4:8])[0]
    if declared in (0, 0xFFFFFFFF):
        return None
    if declared + 8 > actual:
        return (f"truncated: the WAV header declares {declared + 8} bytes but the file has only "
                f"{actual}")
    return None


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, *,
               max_seconds: float = DEFAULT_MAX_SECONDS,
               min_seconds: float = DEFAULT_MIN_SECONDS) -> np.ndarray:
    """Decodes ``path`` to mono float32 ``[samples]`` at ``sample_rate`` Hz.

    Stereo/multichannel input is averaged to mono and other rates are resampled (see the
    module docstring). Raises ``AudioError`` for missing, non-audio, empty, truncated,
    non-finite, too-short (< ``min_seconds``) or too-long (> ``max_seconds``) input.
    """
    if not os.path.exists(path):
        raise AudioError(path, "no such file", "check the path (relative paths are resolved from "
                         f"{os.getcwd()})")
    try:
        info = sf.info(path)
    except sf.LibsndfileError as e:
        raise AudioError(path, f"not a readable audio file ({e.error_string})",
                         "pass a WAV or FLAC file (convert other formats with ffmpeg/sox)") from e
    if info.frames <= 0:
        raise AudioError(path, "empty: the file holds 0 samples", "re-export or drop this file")
    duration = info.frames / info.samplerate
    if duration > max_seconds:
        raise AudioError(path, f"too long: {duration:.1f} s exceeds the limit of {max_seconds:g} s",
                         "split the recording into utterances, or raise max_seconds")
    problem = _riff_truncation(path)
    if problem:
        raise AudioError(path, problem, "the file was cut short; re-copy or re-export it")
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(path, f"truncated or corrupt: decoding failed after the header "
                         f"({e.error_string})", "re-copy or re-export the file") from e
    if wave.shape[0] < info.frames:
        raise AudioError(path, f"truncated: the header promises {info.frames} samples but only "
                         f"{wave.shape[0]} decode", "re-copy or re-export the file")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(path, f"non-finite: {bad} NaN/inf samples",
                         "the file is corrupt or was written from a broken float signal; re-export it")
    wave = resample(downmix(wave), sr, sample_rate)
    if wave.shape[0] < min_seconds * sample_rate:
        raise AudioError(path, f"too short: {wave.shape[0] / sample_rate * 1000:.1f} ms is below the "
                         f"minimum of {min_seconds * 1000:g} ms (one analysis window)",
                         "drop this file, or lower min_seconds")
    return wave
