"""Synthetic speech corpus: sentences spoken by espeak-ng voices, written as a TFDS dataset.

    python -m audiochat_jax.data.synth --sentences sentences.jsonl --out work/speech \\
        --seed 0 --noise_prob 0.3

Each input sentence (``{"text", "split"?, "id"?, "transcript"?}``: "transcript" overrides the
default ``normalize_text(text)`` record text, e.g. the mini world's ``normalize_transcript``;
a .txt file is one sentence a line) is
spoken ``renditions[split]`` times (default once), each by a voice ``ACCENT+VARIANT`` drawn
with a rate and pitch from the ranges in ``SynthConfig``, optionally with white noise at an
SNR drawn from ``noise_snr_db``. Voices whose accent is in ``unseen_accents`` or whose
variant is in ``unseen_variants`` speak only the ``unseen_splits`` ("test_unseen"), so that
split measures generalisation to voices never heard in training; every other split draws
from the seen voices.

Deterministic: utterance i's voice, rate, pitch, noise and espeak seed come from
``np.random.default_rng([seed, i])``, and espeak renders each utterance from a clean engine
(audiochat_jax/audio/espeak.py), so the dataset is the same for any number of workers.
Workers are ``spawn``ed processes (never forked from a process holding TF/JAX threads).

Output under ``--out``: ``synthetic_speech/1.0.0/`` (TFDS; read it with
``tfds.builder_from_directory`` or ``tfds.builder("synthetic_speech", data_dir=OUT)``),
``manifest.jsonl`` (one line per utterance: id, split, text, spoken, voice, rate, pitch,
snr_db, seconds) and ``synth_config.json``. A rerun with the same inputs returns the
existing dataset; different inputs need ``--overwrite`` or a new ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from audiochat_jax.audio import espeak
from audiochat_jax.audio import io as audio_io
from audiochat_jax.util.config_fields import DictConfig

NAME, VERSION = "synthetic_speech", "1.0.0"


@dataclasses.dataclass(frozen=True)
class SynthConfig(DictConfig):
    seed: int = 0
    accents: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029",
                                "en-us-nyc")
    variants: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4",
                                 "klatt", "klatt2", "klatt4")
    # Held out: these speak only the unseen splits (with every accent / variant above).
    unseen_accents: tuple[str, ...] = ("en-gb-x-gbclan",)
    unseen_variants: tuple[str, ...] = ("m7", "f5", "klatt3")
    unseen_splits: tuple[str, ...] = ("test_unseen",)
    rate: tuple[int, int] = (140, 210)  # words per minute, uniform integers, inclusive
    pitch: tuple[int, int] = (30, 70)  # espeak's 0-99 scale
    noise_prob: float = 0.0  # fraction of utterances with additive white noise
    noise_snr_db: tuple[float, float] = (5.0, 30.0)  # uniform
    renditions: Mapping[str, int] = dataclasses.field(default_factory=dict)  # split -> voices/sentence
    split_fractions: Mapping[str, float] = dataclasses.field(default_factory=dict)  # for untagged input
    default_split: str = "train"  # untagged input when split_fractions is empty

    def voices(self, unseen: bool) -> list[str]:
        """The seen (accents x variants) or held-out voice pool, each name validated."""
        seen = {f"{a}+{v}" for a in self.accents for v in self.variants}
        every = {f"{a}+{v}" for a in self.accents + self.unseen_accents
                 for v in self.variants + self.unseen_variants}
        pool = sorted(every - seen if unseen else seen)
        if not pool:
            raise ValueError(f"SynthConfig: the {'unseen' if unseen else 'seen'} voice pool is "
                             "empty; set accents/variants (and unseen_accents/unseen_variants)")
        return [espeak.validate_voice(v) for v in pool]


def read_sentences(path: str) -> list[dict[str, str]]:
    """``.txt`` (a sentence a line) or ``.jsonl`` ({"text", "split"?, "id"?} a line)."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    item = json.loads(line)
                    assert isinstance(item, dict) and isinstance(item["text"], str)
                except (json.JSONDecodeError, AssertionError, KeyError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with a string 'text' "
                                     f"(and optional 'split', 'id'), got {line[:80]!r}") from e
                items.append(item)
            elif path.endswith(".txt"):
                items.append({"text": line.strip()})
            else:
                raise ValueError(f"{path}: sentences must be a .txt (one a line) or .jsonl file")
    return items


def plan(items: Iterable[str | Mapping[str, str]], config: SynthConfig) -> list[dict[str, Any]]:
    """One job per utterance: id, split, text (normalised), spoken, voice, rate, pitch, snr_db, seed."""
    from audiochat_jax.data.speech_datasets import normalize_text
    items = [{"text": it} if isinstance(it, str) else dict(it) for it in items]
    untagged = [i for i, it in enumerate(items) if not it.get("split")]
    if config.split_fractions and untagged:  # a seeded shuffle cut by the fractions
        order = np.random.default_rng(config.seed).permutation(untagged)
        total, start = sum(config.split_fractions.values()), 0
        for k, (split, frac) in enumerate(config.split_fractions.items()):
            end = len(order) if k == len(config.split_fractions) - 1 else \
                start + int(round(frac / total * len(order)))
            for i in order[start:end]:
                items[i]["split"] = split
            start = end
    pools = {False: config.voices(False), True: config.voices(True)}
    jobs, seen_ids = [], set()
    for n, it in enumerate(items):
        split = it.get("split") or config.default_split
        for r in range(config.renditions.get(split, 1)):
            i = len(jobs)
            rng = np.random.default_rng([config.seed, i])
            pool = pools[split in config.unseen_splits]
            job = {"id": str(it.get("id") or f"{split}-{n:06d}") + (f"-r{r}" if r else ""),
                   "split": split, "spoken": it["text"],
                   "text": it.get("transcript") or normalize_text(it["text"]),
                   "voice": pool[rng.integers(len(pool))],
                   "rate": int(rng.integers(config.rate[0], config.rate[1] + 1)),
                   "pitch": int(rng.integers(config.pitch[0], config.pitch[1] + 1)),
                   "snr_db": None, "seed": int(rng.integers(2**31))}
            if rng.random() < config.noise_prob:
                job["snr_db"] = float(rng.uniform(*config.noise_snr_db))
            if job["id"] in seen_ids:
                raise ValueError(f"duplicate utterance id {job['id']!r}: ids must be unique")
            seen_ids.add(job["id"])
            jobs.append(job)
    return jobs


def add_white_noise(wave: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """float32 [samples] plus Gaussian noise at ``snr_db`` relative to the utterance's mean power."""
    power = float(np.mean(wave.astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).standard_normal(wave.shape) * np.sqrt(power / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def render(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job -> a speech record (audio int16 [samples] at 16 kHz). Runs in worker processes."""
    wave = espeak.synthesize(job["spoken"], job["voice"], rate=job["rate"], pitch=job["pitch"],
                             seed=job["seed"], sample_rate=16000)
    if job["snr_db"] is not None:
        wave = add_white_noise(wave, job["snr_db"], job["seed"])
    return {"id": job["id"], "audio": audio_io.float_to_int16(wave), "text": job["text"],
            "speaker": job["voice"], "voice": job["voice"], "rate": job["rate"],
            "pitch": job["pitch"],
            "snr_db": np.float32(np.inf if job["snr_db"] is None else job["snr_db"])}


def synthesize_corpus(items: Iterable[str | Mapping[str, str]], out_dir: str,
                      config: SynthConfig = SynthConfig(), *, workers: int | None = None,
                      overwrite: bool = False, progress: bool = True) -> str:
    """Renders ``items`` and writes the TFDS dataset; returns its directory (see module doc)."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    from audiochat_jax.data.speech_datasets import speech_features

    jobs = plan(items, config)
    if not jobs:
        raise ValueError("synthesize_corpus: no sentences given")
    splits = sorted({j["split"] for j in jobs})
    fingerprint = hashlib.sha256(json.dumps([config.to_dict(), jobs, espeak.version()],
                                            sort_keys=True).encode()).hexdigest()
    ds_dir = os.path.join(out_dir, NAME, VERSION)
    meta_path = os.path.join(out_dir, "synth_config.json")
    if os.path.exists(os.path.join(ds_dir, "dataset_info.json")) and os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f).get("fingerprint") == fingerprint:
                return ds_dir
        if not overwrite:
            raise FileExistsError(f"{out_dir} holds a synthetic corpus made from other sentences "
                                  "or settings; pass overwrite=True (--overwrite) or a new out dir")
    if overwrite and os.path.exists(os.path.join(out_dir, NAME)):
        shutil.rmtree(os.path.join(out_dir, NAME))
    os.makedirs(out_dir, exist_ok=True)

    workers = workers or os.cpu_count() or 1
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    bar = tqdm(total=len(jobs), desc="espeak-ng", unit=" utt", disable=not progress)
    manifest: list[dict] = []

    def split_examples(split) -> Iterator[tuple[str, dict]]:
        todo = [j for j in jobs if j["split"] == split]
        results = pool.imap(render, todo, chunksize=4) if pool else map(render, todo)
        for job, ex in zip(todo, results):
            bar.update()
            manifest.append({k: job[k] for k in ("id", "split", "text", "spoken", "voice",
                                                 "rate", "pitch", "snr_db")}
                            | {"seconds": round(len(ex["audio"]) / 16000, 3)})
            yield ex["id"], ex

    features = speech_features(voice=tfds.features.Text(),
                               rate=tfds.features.Scalar(np.int32), pitch=tfds.features.Scalar(np.int32),
                               snr_db=tfds.features.Scalar(np.float32, doc="inf = clean"))
    class _SynthBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
        url_infos = None  # see ManualSpeechBuilder.url_infos

    try:
        _SynthBuilder(name=NAME, version=VERSION, features=features, data_dir=out_dir,
                split_datasets={s: split_examples(s) for s in splits},
                description=f"espeak-ng {espeak.version()} speech; see audiochat_jax/data/synth.py"
                ).download_and_prepare()
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()
    with open(os.path.join(out_dir, "manifest.jsonl.tmp"), "w") as f:
        for row in sorted(manifest, key=lambda r: (r["split"], r["id"])):
            f.write(json.dumps(row) + "\n")
    os.replace(os.path.join(out_dir, "manifest.jsonl.tmp"), os.path.join(out_dir, "manifest.jsonl"))
    counts = {s: sum(j["split"] == s for j in jobs) for s in splits}
    with open(meta_path + ".tmp", "w") as f:
        json.dump({"fingerprint": fingerprint, "config": config.to_dict(), "counts": counts,
                   "espeak": espeak.version()}, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)
    return ds_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--sentences", required=True, help=".txt (one a line) or .jsonl ({text, split?, id?})")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config_json", help="JSON file of SynthConfig fields (others: defaults)")
    p.add_argument("--seed", type=int, help="overrides the config's seed")
    p.add_argument("--noise_prob", type=float, help="fraction of noisy utterances")
    p.add_argument("--snr_db", type=float, nargs=2, metavar=("LO", "HI"), help="noise SNR range")
    p.add_argument("--split", help="split for untagged sentences (default: config's default_split)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing corpus")
    p.add_argument("--list_voices", action="store_true", help="print accents and variants, exit")
    args = p.parse_args(argv)
    if args.list_voices:
        print("accents:", " ".join(espeak.list_accents()))
        print("variants:", " ".join(espeak.list_variants()))
        return
    cfg = {}
    if args.config_json:
        with open(args.config_json) as f:
            cfg = json.load(f)
    for key, val in (("seed", args.seed), ("noise_prob", args.noise_prob),
                     ("noise_snr_db", args.snr_db), ("default_split", args.split)):
        if val is not None:
            cfg[key] = val
    out = synthesize_corpus(read_sentences(args.sentences), args.out, SynthConfig.from_dict(cfg),
                            workers=args.workers, overwrite=args.overwrite)
    print(out)


if __name__ == "__main__":
    main()
