"""log_mel equals a float64 librosa reference and transformers' ParakeetFeatureExtractor.

Tolerance (5e-4 absolute, on log-mel or normalised features whose values are O(1..10)):
both our JAX features and HF's torch features are float32. A float32 512-point FFT carries
~1e-7 error relative to the frame's energy, and the log turns that into up to ~1e-4 in the
quiet mel bins of a loud frame. Measured here on these signals: ours vs float64 1.4e-4
(unnormalised) / 1.0e-4 (normalised), HF vs float64 0.9e-4, ours vs HF 0.6e-4. 5e-4 is
that float32 floor with a margin; a real convention mismatch (window, centring,
pre-emphasis, mel norm, guard, std) moves values by 1e-2 or more. We also require ours to be
no less accurate than HF itself against the float64 reference (within 2x).
"""
import librosa
import numpy as np
import pytest

from audiochat_jax.audio.features import FeatureConfig, log_mel, mel_filterbank, num_frames

ATOL = 5e-4


def _speechlike(rng, n, sr=16000):
    """A gliding harmonic tone, amplitude-modulated, with digital silence and a little noise."""
    t = np.arange(n) / sr
    f0 = 120 + 80 * t
    sig = sum(0.2 / k * np.sin(2 * np.pi * k * np.cumsum(f0) / sr) for k in range(1, 12))
    sig = sig * (1 + np.sin(2 * np.pi * 3 * t)) + 0.005 * rng.standard_normal(n)
    sig[: n // 5] = 0.0  # espeak output starts with exact zeros
    return sig.astype(np.float32)


def _batch(lengths, n, seed=0):
    rng = np.random.default_rng(seed)
    w = np.zeros((len(lengths), n), np.float32)
    for i, l in enumerate(lengths):
        w[i, :l] = _speechlike(rng, l)
    # Garbage in the padding must not matter (log_mel masks by length).
    for i, l in enumerate(lengths):
        w[i, l:] = rng.standard_normal(n - l)
    return w


def _librosa_reference(x, cfg: FeatureConfig):
    """float64 NeMo/Parakeet log-mel built from librosa's STFT and mel filters."""
    x = x.astype(np.float64)
    if cfg.preemphasis:
        x = np.concatenate([x[:1], x[1:] - cfg.preemphasis * x[:-1]])
    spec = librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                        window=np.hanning(cfg.win_length), center=True, pad_mode="constant")
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                             fmax=cfg.fmax, htk=False, norm="slaney", dtype=np.float64)
    feats = np.log(fb @ np.abs(spec) ** 2 + cfg.log_guard).T[: num_frames(len(x), cfg)]
    if cfg.normalize == "per_feature":
        feats = (feats - feats.mean(0)) / (feats.std(0, ddof=1) + cfg.norm_eps)
    return feats


def _hf(waves, cfg: FeatureConfig):
    from transformers import ParakeetFeatureExtractor
    fe = ParakeetFeatureExtractor(feature_size=cfg.n_mels, sampling_rate=cfg.sample_rate,
                                  hop_length=cfg.hop_length, n_fft=cfg.n_fft,
                                  win_length=cfg.win_length, preemphasis=cfg.preemphasis)
    out = fe(waves, sampling_rate=cfg.sample_rate, return_tensors="np", return_attention_mask=True)
    return out["input_features"], out["attention_mask"]


@pytest.mark.parametrize("normalize", ["per_feature", "none"])
def test_log_mel_matches_float64_librosa_reference(normalize):
    cfg = FeatureConfig(normalize=normalize)
    lengths = [16000, 12345, 5000, 801]
    w = _batch(lengths, 16000)
    feats, flen = log_mel(w, np.array(lengths), cfg)
    feats = np.asarray(feats)
    assert feats.shape == (4, 100, 80) and feats.dtype == np.float32
    np.testing.assert_array_equal(flen, [l // 160 for l in lengths])
    for i, l in enumerate(lengths):
        ref = _librosa_reference(w[i, :l], cfg)
        np.testing.assert_allclose(feats[i, : flen[i]], ref, rtol=0, atol=ATOL)
        assert not feats[i, flen[i]:].any(), "frames past the length must be zero"


def test_log_mel_matches_transformers_parakeet_feature_extractor():
    cfg = FeatureConfig()
    lengths = [16000, 12345, 5000, 801]
    w = _batch(lengths, 16000, seed=1)
    ours, flen = log_mel(w, np.array(lengths), cfg)
    ours = np.asarray(ours)
    hf, hf_mask = _hf([w[i, :l] for i, l in enumerate(lengths)], cfg)
    np.testing.assert_array_equal(flen, hf_mask.sum(1))
    # torch.stft yields one extra frame that HF always masks to zero; we drop it.
    assert hf.shape[1] == ours.shape[1] + 1 and not hf[:, ours.shape[1]:].any()
    np.testing.assert_allclose(ours, hf[:, : ours.shape[1]], rtol=0, atol=ATOL)
    for i, l in enumerate(lengths):
        ref = _librosa_reference(w[i, :l], cfg)
        err_ours = np.abs(ours[i, : flen[i]] - ref).max()
        err_hf = np.abs(hf[i, : flen[i]] - ref).max()
        assert err_ours <= 2 * err_hf + 1e-6, (i, err_ours, err_hf)


def test_non_default_config_matches_hf():
    """64 mels, 20 ms hop, 32 ms window, 8 kHz, no pre-emphasis: every knob reaches the math."""
    cfg = FeatureConfig(sample_rate=8000, n_mels=64, win_ms=32.0, hop_ms=20.0, n_fft=256,
                        preemphasis=0.0)
    assert (cfg.win_length, cfg.hop_length) == (256, 160)
    lengths = [8000, 4321]
    w = _batch(lengths, 8000, seed=2)
    ours, flen = log_mel(w, np.array(lengths), cfg)
    hf, hf_mask = _hf([w[i, :l] for i, l in enumerate(lengths)], cfg)
    np.testing.assert_array_equal(flen, hf_mask.sum(1))
    np.testing.assert_allclose(np.asarray(ours), hf[:, : ours.shape[1]], rtol=0, atol=ATOL)


def test_padding_does_not_change_features():
    x = _speechlike(np.random.default_rng(3), 7000)
    a, la = log_mel(x[None], np.array([7000]))
    padded = np.concatenate([x, np.ones(9000, np.float32)])[None]
    b, lb = log_mel(padded, np.array([7000]))
    assert int(la[0]) == int(lb[0]) == 43 and b.shape[1] == 100
    np.testing.assert_allclose(np.asarray(b)[0, :43], np.asarray(a)[0], rtol=0, atol=1e-5)


def test_digital_silence_hits_the_log_guard_not_minus_inf():
    cfg = FeatureConfig(normalize="none")
    feats, _ = log_mel(np.zeros((1, 1600), np.float32), np.array([1600]), cfg)
    np.testing.assert_allclose(np.asarray(feats), np.log(cfg.log_guard), rtol=1e-6)
    # Normalised silence: zero variance, no NaN.
    feats, _ = log_mel(np.zeros((1, 1600), np.float32), np.array([1600]))
    assert np.isfinite(np.asarray(feats)).all()


def test_tiny_utterances_give_zeros_not_nan():
    w = _batch([150, 170], 400)
    feats, flen = log_mel(w, np.array([150, 170]))
    np.testing.assert_array_equal(flen, [0, 1])
    assert np.isfinite(np.asarray(feats)).all()
    assert not np.asarray(feats)[0].any()


def test_dither_only_with_rng_and_only_inside_lengths():
    import jax
    cfg = FeatureConfig(dither=1e-3, normalize="none")
    w = np.zeros((2, 3200), np.float32)
    lengths = np.array([3200, 1600])
    plain, _ = log_mel(w, lengths, cfg)
    d1, _ = log_mel(w, lengths, cfg, jax.random.key(0))
    d2, _ = log_mel(w, lengths, cfg, jax.random.key(1))
    plain, d1, d2 = map(np.asarray, (plain, d1, d2))
    np.testing.assert_allclose(plain[0], np.log(cfg.log_guard), rtol=1e-6)
    np.testing.assert_allclose(plain[1, :10], np.log(cfg.log_guard), rtol=1e-6)
    assert (d1[:, :10] > plain[:, :10]).all(), "dither lifts silence above the guard"
    assert not np.array_equal(d1, d2)
    assert not d1[1, 10:].any(), "padding frames stay zero"


def test_mel_filterbank_matches_transformers_slaney_filters():
    from transformers.audio_utils import mel_filter_bank
    hf = mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=0.0,
                         max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                         mel_scale="slaney", dtype=np.float32)
    np.testing.assert_allclose(mel_filterbank(FeatureConfig()), hf, rtol=1e-5, atol=1e-8)


def test_config_round_trip_and_errors():
    cfg = FeatureConfig(n_mels=40, fmax=7600.0)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field.*n_mel"):
        FeatureConfig.from_dict({"n_mel": 80})
    with pytest.raises(ValueError, match="normalize"):
        FeatureConfig(normalize="per_utterance")
    with pytest.raises(ValueError, match="exceeds n_fft"):
        FeatureConfig(win_ms=40.0, n_fft=512)
