"""TFDS builders on miniature LibriSpeech / MLS / manifest trees in the real layouts: every
good utterance comes back bit-exact, every planted bad file is skipped, logged and counted,
and the Beam (DirectRunner) build writes the same examples as the plain one."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from audiochat_jax.data import speech_datasets as sd
import speech_fixtures as fx


def _build(cls, manual_dir, data_dir, beam=False):
    kw = {}
    if beam:
        import apache_beam as beam_lib
        kw["beam_runner"] = beam_lib.runners.DirectRunner()
    builder = cls(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), **kw))
    return builder


def _read(data_dir):
    builder = tfds.builder_from_directory(str(data_dir))
    out = {}
    for split in builder.info.splits:
        out[split] = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
    return builder, out


def _check(dataset_dir, expected, planted):
    builder, got = _read(dataset_dir)
    assert set(got) == set(expected)
    for split, utts in expected.items():
        assert set(got[split]) == set(utts), split
        for uid, (audio, text) in utts.items():
            ex = got[split][uid]
            assert ex["audio"].dtype == np.int16
            np.testing.assert_array_equal(ex["audio"], audio)  # 16-bit 16 kHz in: bit-exact
            assert ex["text"].decode() == text
    want = {}
    for split, _, reason in planted:
        want.setdefault(split, {}).setdefault(reason, 0)
        want[split][reason] += 1
    assert {s: c for s, c in builder.info.metadata["skipped"].items() if c} == want
    assert builder.info.features["audio"].sample_rate == 16000
    return got


def test_librispeech_tree_builds_with_bad_files_skipped_and_counted(tmp_path, caplog):
    expected, planted = fx.write_librispeech_tree(str(tmp_path / "manual"))
    with caplog.at_level("WARNING"):
        b = _build(sd.LibrispeechManual, tmp_path / "manual", tmp_path / "data")
    got = _check(b.data_path, expected, planted)
    ex = got["dev_clean"]["19-198-0000"]
    assert ex["speaker"].decode() == "19" and ex["chapter"].decode() == "198"
    assert ex["text"].decode() == "hello world number 1 it's fine"
    for _, path, reason in planted:  # each skipped file is named in the log with its reason
        assert any(path in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    # Readable by name too (the contract: tfds.builder(name, data_dir=...)).
    assert tfds.builder("librispeech_manual", data_dir=str(tmp_path / "data")).info.splits[
        "test_other"].num_examples == 4


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_mls_english_tree_builds_from_flac_and_opus(tmp_path, fmt):
    expected, planted = fx.write_mls_tree(str(tmp_path / "manual"), fmt)
    b = _build(sd.MlsEnglishManual, tmp_path / "manual", tmp_path / "data")
    got = _check(b.data_path, expected, planted)
    assert got["dev"]["12345_678_000001"]["book"].decode() == "678"
    assert got["dev"]["12345_678_000001"]["speaker"].decode() == "12345"


def test_manifest_resamples_downmixes_and_skips_bad_lines(tmp_path):
    root = tmp_path / "manual"
    expected, planted = fx.write_manifest(str(root))
    # One entry at 44.1 kHz stereo: converted by audiochat_jax.audio.io (downmix + soxr).
    stereo = np.stack([fx.tone(7, 0.5, 44100)] * 2, axis=1)
    fx._write(str(root / "clips" / "cd.wav"), stereo, 44100, subtype="PCM_16")
    with open(root / "test.jsonl", "a") as f:
        f.write('{"audio": "clips/cd.wav", "text": "CD audio"}\n')
    b = _build(sd.SpeechManifest, root, tmp_path / "data")
    _, got = _read(b.data_path)
    cd = got["test"].pop("cd")
    assert cd["text"].decode() == "cd audio" and abs(len(cd["audio"]) - 8000) <= 1
    for split, utts in expected.items():
        for uid, (audio, text) in utts.items():
            np.testing.assert_array_equal(got[split][uid]["audio"], audio)
            assert got[split][uid]["text"].decode() == text
    assert b.info.metadata["skipped"]["train"] == {"bad_manifest_line": 2, "missing_audio": 1}


def test_missing_or_wrong_manual_dir_is_a_clear_error(tmp_path):
    # Missing or empty: TFDS's own check, with our layout instructions in the message.
    with pytest.raises(AssertionError, match=r"(?s)nothing does not exist.*train-clean-100/19/198"):
        _build(sd.LibrispeechManual, tmp_path / "nothing", tmp_path / "data")
    # Present but not the corpus (e.g. the tarballs not extracted).
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "train-clean-100.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no corpus found in manual_dir .*wrong.*\n.*19-198"):
        _build(sd.LibrispeechManual, tmp_path / "wrong", tmp_path / "data")


def test_beam_direct_runner_writes_the_same_examples_and_counts(tmp_path):
    expected, planted = fx.write_librispeech_tree(str(tmp_path / "ls"))
    b = _build(sd.LibrispeechManual, tmp_path / "ls", tmp_path / "beam_ls", beam=True)
    _check(b.data_path, expected, planted)
    expected, planted = fx.write_mls_tree(str(tmp_path / "mls"), "flac")
    b = _build(sd.MlsEnglishManual, tmp_path / "mls", tmp_path / "beam_mls", beam=True)
    _check(b.data_path, expected, planted)


def test_normalize_text():
    assert sd.normalize_text("HE SAID, \u201cDON\u2019T\u2014go!\u201d  7%") == "he said don't go 7%"
    assert sd.normalize_text("Seven plus twelve.") == "seven plus twelve"
