"""espeak-ng through ctypes: voices are validated, output is deterministic, 16 kHz, and says
what it was asked to say (checked by an outside recogniser, pocketsphinx)."""
import numpy as np
import pytest
import scipy.signal

from audiochat_jax.audio import espeak

SENTENCES = ["the weather is nice today", "seven plus twelve is nineteen",
             "where does the cat live", "my friend bought a red car"]


def test_lists_english_accents_and_voice_variants():
    accents = espeak.list_accents()
    assert {"en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"} <= set(accents)
    variants = espeak.list_variants()
    assert {"f1", "f5", "m1", "m8", "klatt", "whisper", "croak"} <= set(variants)
    assert espeak.version().startswith("1.5")
    assert espeak.native_sample_rate() == 22050


def test_unknown_variant_is_refused_not_silently_replaced():
    with pytest.raises(espeak.EspeakError, match=r"unknown espeak-ng variant 'f99'.*valid variants: .*f1"):
        espeak.synthesize("hello", "en-us+f99")
    with pytest.raises(espeak.EspeakError, match=r"unknown espeak-ng accent 'en-xx'.*en-us"):
        espeak.validate_voice("en-xx+f1")
    assert espeak.validate_voice("EN-US+f1") == "en-us+f1"


def test_out_of_range_parameters_and_empty_text_are_refused():
    with pytest.raises(espeak.EspeakError, match=r"rate=1000 is outside \[80, 450\]"):
        espeak.synthesize("hello", rate=1000)
    with pytest.raises(espeak.EspeakError, match="pitch=-1"):
        espeak.synthesize("hello", pitch=-1)
    with pytest.raises(espeak.EspeakError, match="empty text"):
        espeak.synthesize("  ")


def test_same_arguments_give_identical_samples_whatever_was_spoken_before():
    # libespeak-ng carries state between utterances; each one is rendered from a fresh fork.
    first, _ = espeak.synthesize_native(SENTENCES[0], "en-us+m1", rate=160)
    espeak.synthesize_native(SENTENCES[1], "en-gb+klatt", rate=300, pitch=80)
    again, _ = espeak.synthesize_native(SENTENCES[0], "en-us+m1", rate=160)
    np.testing.assert_array_equal(first, again)
    other, _ = espeak.synthesize_native(SENTENCES[0], "en-us+f3", rate=160)
    assert other.shape != first.shape or not np.array_equal(other, first)


def test_16khz_output_matches_an_independent_polyphase_resample_of_the_native_audio():
    native, sr = espeak.synthesize_native(SENTENCES[2], "en-us+f2")
    ours = espeak.synthesize(SENTENCES[2], "en-us+f2")
    ref = scipy.signal.resample_poly(native.astype(np.float64) / 32768.0, 320, 441)
    assert sr == 22050 and abs(len(ours) - len(ref)) <= 1
    n = min(len(ours), len(ref))
    # Two different anti-aliasing filters (soxr vs Kaiser FIR) agree on the speech band; they
    # differ only near the 8 kHz cutoff, so compare energy-normalised error, not bits.
    err = np.sqrt(np.mean((ours[:n] - ref[:n]) ** 2) / np.mean(ref[:n] ** 2))
    assert err < 0.05, err
    assert 0.05 < np.abs(ours).max() <= 1.0


def test_rate_shortens_speech_and_pitch_raises_f0():
    import librosa
    slow = espeak.synthesize(SENTENCES[1], "en-us+m3", rate=120)
    fast = espeak.synthesize(SENTENCES[1], "en-us+m3", rate=300)
    assert len(fast) < 0.6 * len(slow)

    def median_f0(wave):
        f0 = librosa.yin(wave, fmin=50, fmax=500, sr=16000, frame_length=1024)
        voiced = librosa.feature.rms(y=wave, frame_length=1024, hop_length=256)[0][: len(f0)] > 0.02
        return float(np.median(f0[voiced]))

    low = median_f0(espeak.synthesize(SENTENCES[1], "en-us+m3", pitch=10))
    high = median_f0(espeak.synthesize(SENTENCES[1], "en-us+m3", pitch=90))
    assert high > 1.3 * low, (low, high)


def test_an_outside_recogniser_hears_the_sentences():
    """pocketsphinx (its own en-us acoustic model), constrained to a grammar of the four
    sentences: with klatt (the voice it recognises best) every hypothesis is a non-empty
    word-prefix of the sentence spoken and at least 3 of 4 are exact. Audio at a wrong sample
    rate or garbled by the wrapper gives empty or wrong hypotheses."""
    pocketsphinx = pytest.importorskip("pocketsphinx")
    decoder = pocketsphinx.Decoder(samprate=16000, loglevel="FATAL")
    grammar = ("#JSGF V1.0;\ngrammar s;\npublic <s> = "
               + " | ".join(f"( {s} )" for s in SENTENCES) + " ;\n")
    decoder.add_jsgf_string("s", grammar)
    decoder.activate_search("s")

    def hear(wave):
        decoder.start_utt()
        decoder.process_raw(np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16).tobytes(),
                            full_utt=True)
        decoder.end_utt()
        return decoder.hyp().hypstr if decoder.hyp() else ""

    exact = 0
    for sentence in SENTENCES:
        hyp = hear(espeak.synthesize(sentence, "en-us+klatt", rate=170))
        assert hyp and sentence.split()[: len(hyp.split())] == hyp.split(), (sentence, hyp)
        exact += hyp == sentence
    assert exact >= 3
    # Control: the same audio declared at the wrong rate (22.05 kHz samples read as 16 kHz).
    native, _ = espeak.synthesize_native(SENTENCES[0], "en-us+klatt", rate=170)
    assert hear(native / 32768.0) != SENTENCES[0]


def test_a_process_running_jax_never_forks_itself_and_gets_the_same_samples(monkeypatch):
    import subprocess
    import sys
    import jax  # noqa: F401  (this process runs JAX's threads: a fork here could deadlock)
    want = subprocess.run([sys.executable, "-c", "import sys; from audiochat_jax.audio import espeak; "
                           "sys.stdout.buffer.write(espeak.synthesize_native('seven plus twelve', 'en-gb+m3', "
                           "seed=4)[0].tobytes())"], capture_output=True, check=True, timeout=120).stdout

    def no_fork():
        raise AssertionError("os.fork() called in a process that runs JAX")
    monkeypatch.setattr(espeak.os, "fork", no_fork)
    got, _ = espeak.synthesize_native("seven plus twelve", "en-gb+m3", seed=4)
    assert got.tobytes() == want and len(got) > 1000
