"""Log-mel filterbank features in JAX, with the NeMo / Parakeet conventions.

``log_mel(waveforms [batch, samples], lengths [batch], config)`` is jit-able and batched;
every step below is what ``transformers.ParakeetFeatureExtractor`` (and NeMo's
``AudioToMelSpectrogramPreprocessor`` with the Parakeet/FastConformer settings) does:

1. (optional, training only) dither: ``x += dither * N(0, 1)`` inside each utterance. NeMo
   trains with 1e-5; HF's extractor has none, so the default here is 0.
2. pre-emphasis ``y[0] = x[0]``, ``y[t] = x[t] - 0.97 x[t-1]``, then zero beyond ``length``
   (so padding never leaks into the last frames).
3. STFT with ``center=True`` and zero ("constant") padding of ``n_fft // 2`` on each side,
   a **symmetric** Hann window of ``win_length = 25 ms = 400`` samples zero-padded to
   ``n_fft = 512`` (``torch.hann_window(400, periodic=False)`` centred, torch.stft's rule),
   hop 10 ms = 160 samples; power spectrum ``|X|^2``.
4. Mel filterbank: 80 triangular filters, Slaney mel scale and Slaney area normalisation,
   0 Hz .. sample_rate/2 (``librosa.filters.mel(..., htk=False, norm="slaney")``).
5. ``log(mel + 2**-24)``: an additive guard, so digital silence gives log(2**-24), not -inf.
6. Per-utterance, per-mel-bin normalisation over the valid frames: mean, unbiased std
   (``n - 1``), ``(x - mean) / (std + 1e-5)``; frames past the length are set to 0.

Frames: an utterance of ``n`` samples has ``num_frames(n) = n // hop`` valid frames (HF's
``(n + 2 * (n_fft // 2) - n_fft) // hop``). ``log_mel`` returns exactly
``num_frames(samples)`` frames for a ``[batch, samples]`` input — torch.stft would give one
more, which HF then always masks; it is dropped here so shapes follow the valid count.

Differences from HF, on purpose: utterances with 0 or 1 valid frames give zeros instead of
NaN/inf (HF divides by ``n - 1``); the window is applied to the 400 non-zero samples and
the FFT zero-pads at the end instead of both sides — a circular shift of the frame, which
changes the phase only, not ``|X|^2``.

Precision: float32 throughout (the FFT and the mel matmul at ``Precision.HIGHEST``, so a
GPU's TF32 does not creep in). tests/test_features.py measures the error against a float64
librosa reference and against HF.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from audiochat_jax.util.config_fields import DictConfig



@dataclasses.dataclass(frozen=True)
class FeatureConfig(DictConfig):
    """Log-mel settings; the defaults are Parakeet's (HF ``ParakeetFeatureExtractor()``)."""
    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    preemphasis: float = 0.97  # 0.0 disables
    fmin: float = 0.0
    fmax: Optional[float] = None  # None: sample_rate / 2
    log_guard: float = 2.0 ** -24
    normalize: str = "per_feature"  # or "none"
    norm_eps: float = 1e-5
    dither: float = 0.0  # NeMo trains with 1e-5; only applied when log_mel gets an rng

    def __post_init__(self):
        if self.normalize not in ("per_feature", "none"):
            raise ValueError(f"FeatureConfig.normalize={self.normalize!r}: use 'per_feature' or 'none'")
        if self.win_length > self.n_fft:
            raise ValueError(f"FeatureConfig: window of {self.win_ms} ms = {self.win_length} samples "
                             f"exceeds n_fft={self.n_fft}; raise n_fft or shorten win_ms")
        if self.hop_length < 1:
            raise ValueError(f"FeatureConfig.hop_ms={self.hop_ms} is below one sample")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))



def num_frames(n_samples, config: FeatureConfig = FeatureConfig()):
    """Valid feature frames of an utterance of ``n_samples`` (int or integer array)."""
    return (n_samples + 2 * (config.n_fft // 2) - config.n_fft) // config.hop_length


@functools.lru_cache(maxsize=16)
def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` Slaney-scale, Slaney-normalised filters (float32)."""
    import librosa  # lazy: only needed while tracing
    fb = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                             fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney",
                             dtype=np.float32)
    return np.ascontiguousarray(fb.T)


def _frames(y: jax.Array, n_out: int, win: int, hop: int, left_pad: int) -> jax.Array:
    """``[batch, samples]`` -> ``[batch, n_out, win]``; frame t = y[t*hop - left_pad : ... + win].

    Built from hop-sized chunks (a reshape and ``ceil(win / hop)`` shifted slices) rather than
    a gather: the window spans k = win // hop whole chunks plus r = win % hop samples.
    """
    k, r = divmod(win, hop)
    n_chunks = n_out + k + (1 if r else 0)
    total = n_chunks * hop
    right_pad = total - left_pad - y.shape[1]
    y = jnp.pad(y, ((0, 0), (left_pad, max(right_pad, 0))))[:, :total]
    chunks = y.reshape(y.shape[0], n_chunks, hop)
    parts = [chunks[:, j:j + n_out] for j in range(k)]
    if r:
        parts.append(chunks[:, k:k + n_out, :r])
    return jnp.concatenate(parts, axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def log_mel(waveforms: jax.Array, lengths: jax.Array, config: FeatureConfig = FeatureConfig(),
            rng: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Log-mel features of a padded batch.

    Args:
      waveforms: ``[batch, samples]`` float audio in [-1, 1] (int16 PCM: divide by 32768 first).
      lengths: ``[batch]`` int, valid samples per row (the rest is padding, ignored).
      config: static ``FeatureConfig``.
      rng: PRNG key for dither; without it (or with ``config.dither == 0``) nothing is added.

    Returns:
      features ``[batch, num_frames(samples), n_mels]`` float32 (zero past each length) and
      frame_lengths ``[batch]`` int32 = ``num_frames(lengths)``.
    """
    x = jnp.asarray(waveforms, jnp.float32)
    batch, n = x.shape
    lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), n)
    valid = jnp.arange(n)[None, :] < lengths[:, None]
    x = jnp.where(valid, x, 0.0)
    if rng is not None and config.dither > 0:
        x = x + jnp.where(valid, config.dither * jax.random.normal(rng, x.shape, jnp.float32), 0.0)
    if config.preemphasis:
        x = jnp.concatenate([x[:, :1], x[:, 1:] - config.preemphasis * x[:, :-1]], axis=1)
        x = jnp.where(valid, x, 0.0)  # the filter's x[t] - a*x[t-1] at t = length is not speech

    win, hop, n_fft = config.win_length, config.hop_length, config.n_fft
    n_out = num_frames(n, config)
    # torch.stft centres the frame (pad n_fft//2) and the window inside n_fft
    # ((n_fft - win)//2 zeros left of it): its first non-zero sample sits at t*hop - left_pad.
    left_pad = n_fft // 2 - (n_fft - win) // 2
    frames = _frames(x, n_out, win, hop, left_pad)  # [batch, frames, win]
    window = jnp.asarray(np.hanning(win), jnp.float32)  # symmetric Hann = periodic=False
    spec = jnp.fft.rfft(frames * window, n=n_fft, axis=-1)  # [batch, frames, n_fft//2 + 1]
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.matmul(power, jnp.asarray(mel_filterbank(config)),
                     precision=jax.lax.Precision.HIGHEST)  # [batch, frames, n_mels]
    feats = jnp.log(mel + config.log_guard)

    frame_lengths = num_frames(lengths, config).astype(jnp.int32)
    fmask = (jnp.arange(n_out)[None, :] < frame_lengths[:, None])[..., None]  # [batch, frames, 1]
    if config.normalize == "per_feature":
        count = jnp.maximum(frame_lengths, 1).astype(jnp.float32)[:, None, None]
        mean = jnp.sum(jnp.where(fmask, feats, 0.0), axis=1, keepdims=True) / count
        # Unbiased (n - 1) as NeMo/HF; a 1-frame utterance would divide by zero there.
        dof = jnp.maximum(frame_lengths - 1, 1).astype(jnp.float32)[:, None, None]
        var = jnp.sum(jnp.where(fmask, (feats - mean) ** 2, 0.0), axis=1, keepdims=True) / dof
        feats = (feats - mean) / (jnp.sqrt(var) + config.norm_eps)
    feats = jnp.where(fmask, feats, 0.0)
    return feats, frame_lengths
