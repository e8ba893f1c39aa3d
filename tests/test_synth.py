"""The espeak-ng synthetic corpus: a deterministic plan, held-out voices only in the unseen
split, identical output for any worker count, noise at the SNR asked for, TFDS-readable."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from audiochat_jax.data import synth
import speech_fixtures as fx

SENTENCES = [{"text": "The cat sat on the mat.", "split": "train"},
             {"text": "seven plus twelve is nineteen", "split": "train"},
             {"text": "where does anna live", "split": "test_seen"},
             {"text": "where does anna live", "split": "test_unseen"}]


def test_plan_is_deterministic_and_keeps_unseen_voices_out_of_training():
    cfg = synth.SynthConfig(seed=3, renditions={"train": 3}, noise_prob=0.5)
    items = [{"text": f"sentence {i}", "split": s} for i in range(40)
             for s in ("train", "test_unseen")]
    jobs = synth.plan(items, cfg)
    assert jobs == synth.plan(items, cfg)
    assert jobs != synth.plan(items, synth.SynthConfig(seed=4, renditions={"train": 3}, noise_prob=0.5))
    seen, unseen = set(cfg.voices(False)), set(cfg.voices(True))
    assert not seen & unseen and len(unseen) >= 20
    train = [j for j in jobs if j["split"] == "train"]
    held = [j for j in jobs if j["split"] == "test_unseen"]
    assert len(train) == 120 and len(held) == 40
    assert {j["voice"] for j in train} <= seen and {j["voice"] for j in held} <= unseen
    assert all(j["voice"].split("+")[1] in cfg.unseen_variants
               or j["voice"].split("+")[0] in cfg.unseen_accents for j in held)
    assert all(cfg.rate[0] <= j["rate"] <= cfg.rate[1] and cfg.pitch[0] <= j["pitch"] <= cfg.pitch[1]
               for j in jobs)
    noisy = [j["snr_db"] for j in jobs if j["snr_db"] is not None]
    assert 0.3 * len(jobs) < len(noisy) < 0.7 * len(jobs)
    assert all(cfg.noise_snr_db[0] <= s <= cfg.noise_snr_db[1] for s in noisy)
    assert len({j["id"] for j in jobs}) == len(jobs)


def test_split_fractions_assign_untagged_sentences_by_seed():
    cfg = synth.SynthConfig(split_fractions={"train": 0.8, "test_seen": 0.1, "test_unseen": 0.1})
    jobs = synth.plan([f"line {i}" for i in range(50)], cfg)
    counts = {s: sum(j["split"] == s for j in jobs) for s in ("train", "test_seen", "test_unseen")}
    assert counts == {"train": 40, "test_seen": 5, "test_unseen": 5}
    assert [j["split"] for j in jobs] == [j["split"] for j in synth.plan([f"line {i}" for i in range(50)], cfg)]


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2: expected a JSON object with a string 'text'"):
        synth.read_sentences(str(bad))
    with pytest.raises(ValueError, match="duplicate utterance id 'a'"):
        synth.plan([{"text": "x", "id": "a"}, {"text": "y", "id": "a"}], synth.SynthConfig())
    with pytest.raises(Exception, match="unknown espeak-ng variant 'f77'"):
        synth.plan(["x"], synth.SynthConfig(variants=("f77",)))
    with pytest.raises(ValueError, match="unknown field"):
        synth.SynthConfig.from_dict({"seeed": 1})


def test_add_white_noise_hits_the_requested_snr():
    wave = fx.tone(1, 1.0).astype(np.float32) / 32768
    noisy = synth.add_white_noise(wave, 10.0, seed=0)
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.2, snr


def test_corpus_is_tfds_readable_and_identical_for_one_or_two_workers(tmp_path):
    cfg = synth.SynthConfig(seed=1, noise_prob=0.5, noise_snr_db=(15.0, 15.0))
    one = synth.synthesize_corpus(SENTENCES, str(tmp_path / "one"), cfg, workers=1, progress=False)
    two = synth.synthesize_corpus(SENTENCES, str(tmp_path / "two"), cfg, workers=2, progress=False)
    assert one == str(tmp_path / "one" / "synthetic_speech" / "1.0.0")

    def read(path):
        b = tfds.builder_from_directory(path)
        return {s: {ex["id"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split=s))}
                for s in b.info.splits}

    a, b = read(one), read(two)
    assert set(a) == {"train", "test_seen", "test_unseen"}
    for split in a:
        for uid, ex in a[split].items():
            np.testing.assert_array_equal(ex["audio"], b[split][uid]["audio"])
            assert ex["audio"].dtype == np.int16 and len(ex["audio"]) > 8000  # > 0.5 s at 16 kHz
    train0 = a["train"]["train-000000"]
    assert train0["text"].decode() == "the cat sat on the mat"
    assert train0["speaker"].decode() == train0["voice"].decode()
    # The stored audio is exactly what rendering the planned job gives in this process.
    jobs = {j["id"]: j for j in synth.plan(SENTENCES, cfg)}
    for split in a:
        for uid, ex in a[split].items():
            np.testing.assert_array_equal(ex["audio"], synth.render(jobs[uid])["audio"])
            want = np.inf if jobs[uid]["snr_db"] is None else 15.0
            assert ex["snr_db"] == np.float32(want)
    assert a["test_unseen"]["test_unseen-000003"]["voice"].decode() in cfg.voices(True)
    # Manifest and by-name loading.
    rows = [json.loads(l) for l in open(tmp_path / "one" / "manifest.jsonl")]
    assert sorted(r["id"] for r in rows) == sorted(jobs) and all(r["seconds"] > 0.5 for r in rows)
    assert tfds.builder("synthetic_speech", data_dir=str(tmp_path / "one")).info.splits[
        "train"].num_examples == 2


def test_rerun_reuses_and_changed_input_needs_overwrite(tmp_path):
    out = str(tmp_path / "c")
    path = fx.make_synthetic_dataset(out, SENTENCES[:2])
    stamp = os.path.getmtime(os.path.join(path, "dataset_info.json"))
    assert fx.make_synthetic_dataset(out, SENTENCES[:2]) == path
    assert os.path.getmtime(os.path.join(path, "dataset_info.json")) == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        fx.make_synthetic_dataset(out, SENTENCES[:1])
    (tmp_path / "s.txt").write_text("hello there\ngood morning\n")
    synth.main(["--sentences", str(tmp_path / "s.txt"), "--out", out, "--workers", "1",
                "--overwrite", "--split", "test_seen"])
    b = tfds.builder_from_directory(path)
    assert list(b.info.splits) == ["test_seen"] and b.info.splits["test_seen"].num_examples == 2


def test_caller_transcript_overrides_default_normalisation():
    jobs = synth.plan([{"text": "Add 7 and 5.", "transcript": "add seven and five"},
                       {"text": "Add 7 and 5."}], synth.SynthConfig())
    assert [j["text"] for j in jobs] == ["add seven and five", "add 7 and 5"]
    assert jobs[0]["spoken"] == "Add 7 and 5."
