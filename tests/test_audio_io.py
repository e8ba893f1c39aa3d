"""load_audio: WAV/FLAC decoding, documented conversions, and errors that name file + fix."""
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from audiochat_jax.audio.io import AudioError, float_to_int16, int16_to_float, load_audio


def _tone(n, sr, f=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("wav", "FLOAT")])
def test_16k_mono_round_trips_exactly_as_libsndfile_decodes(tmp_path, ext, subtype):
    x = float_to_int16(_tone(8000, 16000))
    path = tmp_path / f"a.{ext}"
    sf.write(path, int16_to_float(x), 16000, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (8000,)
    np.testing.assert_array_equal(y, int16_to_float(x))  # int16/32768 is exact in float32


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path):
    left, right = _tone(4000, 16000, 300), _tone(4000, 16000, 700, 0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-7)


def test_22050_is_resampled_like_a_polyphase_reference(tmp_path):
    """espeak-ng writes 22.05 kHz; compare soxr against scipy's 320/441 polyphase filter."""
    x = _tone(22050, 22050, 440.0)
    sf.write(tmp_path / "e.wav", x, 22050, subtype="FLOAT")
    y = load_audio(tmp_path / "e.wav")
    ref = resample_poly(x.astype(np.float64), 320, 441)
    assert abs(len(y) - 16000) <= 1 and len(ref) == 16000
    # Edges differ by filter design (transients); the interior must agree on a 440 Hz tone of
    # amplitude 0.5. Measured: 4.2e-4 from scipy's polyphase filter (its own passband ripple),
    # 4.8e-7 from the tone itself sampled at 16 kHz (float32 precision).
    np.testing.assert_allclose(y[500:15500], ref[500:15500], atol=1e-3)
    np.testing.assert_allclose(y[500:15500], _tone(16000, 16000)[500:15500], atol=2e-6)


def test_int16_conversion_clips_instead_of_wrapping():
    np.testing.assert_array_equal(float_to_int16(np.array([1.5, -1.5, 0.5])), [32767, -32768, 16384])
    np.testing.assert_array_equal(int16_to_float(np.array([-32768, 16384], np.int16)), [-1.0, 0.5])


def _expect(path, *fragments, **kw):
    with pytest.raises(AudioError) as e:
        load_audio(path, **kw)
    msg = str(e.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.wav", "no such file", "check the path")


def test_not_audio(tmp_path):
    (tmp_path / "t.wav").write_text("this is a transcript, not audio")
    _expect(tmp_path / "t.wav", "not a readable audio file", "WAV or FLAC")


def test_empty(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), 16000)
    _expect(tmp_path / "e.wav", "empty", "0 samples")


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_truncated(tmp_path, ext):
    full = tmp_path / f"full.{ext}"
    sf.write(full, _tone(16000, 16000) + 0.01 * np.random.default_rng(0).standard_normal(16000),
             16000, subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    _expect(cut, "truncated", "re-")


def test_non_finite(tmp_path):
    x = _tone(1600, 16000)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    _expect(tmp_path / "n.wav", "non-finite", "2 NaN/inf")


def test_too_long_is_refused_before_decoding(tmp_path):
    sf.write(tmp_path / "l.wav", np.zeros(16000 * 3, np.float32), 16000)
    _expect(tmp_path / "l.wav", "too long", "3.0 s", "limit of 2 s", "max_seconds", max_seconds=2.0)
    assert load_audio(tmp_path / "l.wav", max_seconds=3.0).shape == (48000,)


def test_too_short(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(100, np.float32), 16000)
    _expect(tmp_path / "s.wav", "too short", "6.2 ms", "25 ms", "min_seconds")
