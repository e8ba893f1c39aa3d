"""SpecAugment masks and additive noise: shapes of masks, exact SNR, noise colours."""
import jax
import numpy as np
import pytest
from scipy.signal import welch

from audiochat_jax.audio.augment import (SpecAugmentConfig, add_noise, sample_snr_db,
                                          spec_augment)


def _features(batch=64, frames=200, mels=80, seed=0):
    # Strictly positive so a masked cell (0.0) is unambiguous.
    return np.random.default_rng(seed).uniform(1, 2, (batch, frames, mels)).astype(np.float32)


def test_frequency_masks_are_bands_across_all_valid_frames():
    cfg = SpecAugmentConfig(freq_masks=1, freq_width=27, time_masks=0)
    x = _features()
    lengths = np.random.default_rng(1).integers(20, 200, 64)
    x[np.arange(200)[None, :] >= lengths[:, None]] = 0.0  # padding as log_mel leaves it
    y = np.asarray(spec_augment(jax.random.key(0), x, lengths, cfg))
    widths = []
    for i, l in enumerate(lengths):
        masked = y[i, :l] == 0.0
        cols = masked.all(axis=0)
        np.testing.assert_array_equal(masked, np.broadcast_to(cols, masked.shape))
        idx = np.flatnonzero(cols)
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx), "one mask is one contiguous band"
        widths.append(len(idx))
        np.testing.assert_array_equal(y[i, :l][~masked], x[i, :l][~masked])
        assert not y[i, l:].any()
    # Width ~ Uniform{0..27}: mean 13.5, std of the mean over 64 draws ~1.0.
    assert max(widths) <= 27 and 10 < np.mean(widths) < 17


def test_adaptive_time_masks_stay_inside_each_utterance():
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=10, time_width=0.05)
    x = _features(frames=400)
    lengths = np.array([400, 300, 100, 20, 1, 0] * 10 + [400] * 4)
    y = np.asarray(spec_augment(jax.random.key(1), x, lengths, cfg))
    for i, l in enumerate(lengths):
        masked_rows = (y[i] == 0.0).all(axis=1)
        assert not ((y[i] == 0.0) & ~masked_rows[:, None]).any(), "time masks cover whole frames"
        assert not masked_rows[l:].any(), "no mask in the padding"
        np.testing.assert_array_equal(y[i, l:], x[i, l:])
        # 10 masks of at most max(1, floor(0.05 * l)) frames each.
        assert masked_rows.sum() <= 10 * max(1, int(0.05 * l)) if l else masked_rows.sum() == 0
    assert (y[lengths == 400] == 0.0).all(axis=2).any(axis=1).all(), "long utterances get masked"


def test_spec_augment_is_a_function_of_the_key():
    cfg = SpecAugmentConfig()
    x, lengths = _features(batch=4), np.array([200, 150, 100, 50])
    a = spec_augment(jax.random.key(7), x, lengths, cfg)
    b = spec_augment(jax.random.key(7), x, lengths, cfg)
    c = spec_augment(jax.random.key(8), x, lengths, cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    off = SpecAugmentConfig(freq_masks=0, time_masks=0)
    np.testing.assert_array_equal(spec_augment(jax.random.key(7), x, lengths, off), x)


def test_spec_augment_config_errors_and_round_trip():
    assert SpecAugmentConfig.from_dict(SpecAugmentConfig(time_width=20).to_dict()).time_width == 20
    with pytest.raises(ValueError, match="unknown field"):
        SpecAugmentConfig.from_dict({"freq_mask": 2})
    with pytest.raises(ValueError, match=">= 0"):
        SpecAugmentConfig(freq_masks=-1)


def _speech(batch, n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)[None] * rng.uniform(0.2, 1, (batch, 1))).astype(np.float32)
    x[:, : n // 8] = 0.0  # digital silence
    return x


def _snr(clean, noisy, length):
    noise = noisy[:length] - clean[:length]
    return 10 * np.log10(np.mean(clean[:length].astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))


@pytest.mark.parametrize("colour", ["white", "pink", "brown", "blue"])
def test_add_noise_hits_the_requested_snr_per_utterance(colour):
    x = _speech(4, 16000)
    lengths = np.array([16000, 12000, 8000, 4000])
    snr = np.array([0.0, 5.0, 10.0, 30.0], np.float32)
    y = np.asarray(add_noise(jax.random.key(0), x, lengths, snr, colour=colour))
    for i, l in enumerate(lengths):
        assert abs(_snr(x[i], y[i], l) - snr[i]) < 0.01
        np.testing.assert_array_equal(y[i, l:], x[i, l:])
    # Digital silence is no longer silent.
    assert (np.abs(y[:, :1000]) > 0).mean() > 0.99 and not x[:, :1000].any()


def test_inf_snr_is_clean_and_silence_gets_no_noise():
    x = _speech(3, 4000)
    x[2] = 0.0
    y = np.asarray(add_noise(jax.random.key(0), x, np.array([4000] * 3), np.array([np.inf, 10, 10])))
    np.testing.assert_array_equal(y[0], x[0])
    assert not np.array_equal(y[1], x[1])
    np.testing.assert_array_equal(y[2], 0.0)


@pytest.mark.parametrize("colour,alpha", [("white", 0.0), ("pink", 1.0), ("brown", 2.0),
                                          ("blue", -1.0), ("violet", -2.0)])
def test_noise_colour_has_the_right_spectral_slope(colour, alpha):
    """Welch PSD of the added noise, fitted in log-log between 100 Hz and 6 kHz: slope = -alpha."""
    n = 1 << 16
    x = np.full((1, n), 0.1, np.float32)  # constant signal: P_signal = 0.01
    y = np.asarray(add_noise(jax.random.key(3), x, np.array([n]), 0.0, colour=colour))
    f, psd = welch(y[0] - x[0], fs=16000, nperseg=4096)
    band = (f > 100) & (f < 6000)
    slope = np.polyfit(np.log10(f[band]), np.log10(psd[band]), 1)[0]
    assert abs(slope + alpha) < 0.1, slope


def test_unknown_colour_is_named():
    with pytest.raises(ValueError, match="colour 'grey' unknown.*pink"):
        add_noise(jax.random.key(0), np.zeros((1, 100), np.float32), np.array([100]), 10.0, colour="grey")


def test_sample_snr_db_range_and_probability():
    snr = np.asarray(sample_snr_db(jax.random.key(0), 4000, 0.0, 20.0, prob=0.25))
    noisy = np.isfinite(snr)
    assert 0.22 < noisy.mean() < 0.28
    assert snr[noisy].min() >= 0 and snr[noisy].max() <= 20 and 9 < snr[noisy].mean() < 11
    assert (snr[~noisy] == np.inf).all()
