"""Miniature speech corpora for tests, in the real release layouts (shared by several test files).

    write_librispeech_tree(root)   LibriSpeech/{dev-clean,test-other}/SPK/CHAP/*.flac + .trans.txt
    write_mls_tree(root, "opus")   mls_english_opus/{train,dev}/transcripts.txt + audio/SPK/BOOK/*
    write_manifest(root)           root/{train,test}.jsonl + root/clips/*.wav
    make_synthetic_dataset(out)    a tiny espeak-ng corpus via audiochat_jax.data.synth

Each writer returns ``{split: {id: (int16 audio [samples] at 16 kHz, transcript)}}`` for the
good utterances, and ``bad`` lists (split, path, reason) for the ones planted to be skipped.
Audio is short deterministic noise-modulated tones: content does not matter to the builders,
bit-exact round trips do.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import soundfile as sf

SR = 16000


def tone(seed: int, seconds: float = 0.3, sample_rate: int = SR) -> np.ndarray:
    """int16 [samples]: a random-pitch tone with noise, distinct for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.standard_normal(t.shape)
    return np.round(wave * 32767).astype(np.int16)


def _write(path: str, audio: np.ndarray, sample_rate: int = SR, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, sample_rate, **kw)


def write_librispeech_tree(root: str, bad: bool = True) -> tuple[dict, list]:
    """Two splits, two speakers, two chapters; with ``bad``: a corrupt FLAC, a transcript
    line whose FLAC is missing, and a FLAC with no transcript line."""
    base, expected, planted, seed = os.path.join(root, "LibriSpeech"), {}, [], 0
    for split_dir, split in (("dev-clean", "dev_clean"), ("test-other", "test_other")):
        expected[split] = {}
        for spk, chap in (("19", "198"), ("2277", "149896")):
            cdir = os.path.join(base, split_dir, spk, chap)
            lines = []
            for utt in range(2):
                uid, seed = f"{spk}-{chap}-{utt:04d}", seed + 1
                text = f"HELLO WORLD NUMBER {seed} IT'S FINE"
                _write(os.path.join(cdir, uid + ".flac"), tone(seed, 0.2 + 0.05 * utt), subtype="PCM_16")
                expected[split][uid] = (tone(seed, 0.2 + 0.05 * utt), text.lower())
                lines.append(f"{uid} {text}")
            if bad and split == "dev_clean" and spk == "19":
                corrupt = os.path.join(cdir, f"{spk}-{chap}-0002.flac")
                with open(corrupt, "wb") as f:
                    f.write(b"fLaC" + b"\x00" * 40)
                lines.append(f"{spk}-{chap}-0002 A CORRUPT FILE")
                lines.append(f"{spk}-{chap}-0003 A MISSING FILE")
                _write(os.path.join(cdir, f"{spk}-{chap}-0004.flac"), tone(999), subtype="PCM_16")
                planted += [(split, corrupt, "bad_audio"),
                            (split, os.path.join(cdir, f"{spk}-{chap}-0003.flac"), "missing_audio"),
                            (split, os.path.join(cdir, f"{spk}-{chap}-0004.flac"), "no_transcript")]
            with open(os.path.join(cdir, f"{spk}-{chap}.trans.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    return expected, planted


def write_mls_tree(root: str, fmt: str = "flac", bad: bool = True) -> tuple[dict, list]:
    """MLS English: train and dev, ``fmt`` "flac" (16-bit) or "opus"; with ``bad``: an empty
    audio file and a transcript line with no audio."""
    base = os.path.join(root, "mls_english" + ("_opus" if fmt == "opus" else ""))
    expected, planted, seed = {}, [], 100
    for split in ("train", "dev"):
        expected[split], lines = {}, []
        for spk, book in (("4800", "10003"), ("12345", "678")):
            for utt in range(2):
                uid, seed = f"{spk}_{book}_{utt:06d}", seed + 1
                path = os.path.join(base, split, "audio", spk, book, f"{uid}.{fmt}")
                audio = tone(seed)
                if fmt == "opus":
                    _write(path, audio, format="OGG", subtype="OPUS")
                    audio, _ = sf.read(path, dtype="int16")  # lossy: the reference is the decode
                else:
                    _write(path, audio, subtype="PCM_16")
                expected[split][uid] = (audio, f"utterance {seed} of book {book}")
                lines.append(f"{uid}\tutterance {seed} of book {book}")
        if bad and split == "train":
            empty = os.path.join(base, split, "audio", "4800", "10003", f"4800_10003_000009.{fmt}")
            open(empty, "wb").close()
            lines += ["4800_10003_000009\tan empty file", "4800_10003_000010\tno audio at all"]
            planted += [(split, empty, "bad_audio"),
                        (split, empty.replace("000009", "000010").replace("." + fmt, ".flac"),
                         "missing_audio")]
        with open(os.path.join(base, split, "transcripts.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return expected, planted


def write_manifest(root: str, bad: bool = True) -> tuple[dict, list]:
    """root/train.jsonl (relative paths, one 44.1 kHz stereo WAV that must be converted) and
    root/test.jsonl (absolute paths); with ``bad``: a malformed line and a missing file."""
    expected, planted = {"train": {}, "test": {}}, []
    for split in ("train", "test"):
        rows = []
        for k in range(3):
            uid, seed = f"{split}{k}", 200 + k + (10 if split == "test" else 0)
            rel = os.path.join("clips", uid + ".wav")
            audio = tone(seed)
            _write(os.path.join(root, rel), audio, subtype="PCM_16")
            rows.append(json.dumps({"audio": rel if split == "train" else os.path.join(root, rel),
                                    "text": f"Clip number {k}!", "id": uid, "speaker": f"s{k}"}))
            expected[split][uid] = (audio, f"clip number {k}")
        rows.append("")
        if bad and split == "train":
            rows += ['{"audio": "clips/nope.wav"}', '{"audio": "clips/gone.wav", "text": "gone"}',
                     "not json at all"]
            planted += [(split, os.path.join(root, "train.jsonl"), "bad_manifest_line"),
                        (split, os.path.join(root, "clips", "gone.wav"), "missing_audio"),
                        (split, os.path.join(root, "train.jsonl"), "bad_manifest_line")]
        with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return expected, planted


def make_synthetic_dataset(out_dir: str, sentences: list[Any] | None = None, **config) -> str:
    """A tiny espeak-ng TFDS dataset (train / test_seen / test_unseen); returns its directory,
    for ``tfds.builder_from_directory``. Takes ~5 s; ``config`` overrides SynthConfig fields."""
    from audiochat_jax.data import synth
    sentences = sentences or [
        {"text": "the cat sat on the mat", "split": "train"},
        {"text": "seven plus twelve is nineteen", "split": "train"},
        {"text": "where does anna live", "split": "test_seen"},
        {"text": "where does anna live", "split": "test_unseen"},
    ]
    return synth.synthesize_corpus(sentences, out_dir, synth.SynthConfig(**config), workers=1,
                                   progress=False)
