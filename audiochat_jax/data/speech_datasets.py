"""TFDS builders for speech corpora on local disk: LibriSpeech, MLS English, JSONL manifests.

Every builder writes the record schema the rest of the code reads (``speech_features``)::

    {"id": str, "audio": int16 [samples] at 16 kHz, "text": str (normalised), "speaker": str}

and reads the corpus from a ``manual_dir`` in the corpus's own release layout (see
docs/datasets.md)::

    librispeech_manual   [LibriSpeech/]{train-clean-100,dev-clean,...}/SPK/CHAP/SPK-CHAP-UTT.flac
                                                               SPK/CHAP/SPK-CHAP.trans.txt
                         splits: train_clean100, dev_clean, test_other, ... (TFDS's names)
    mls_english_manual   [mls_english[_opus]/]{train,dev,test}/transcripts.txt   ("ID<TAB>text")
                         {split}/audio/SPK/BOOK/SPK_BOOK_UTT.{flac,opus}
    speech_manifest      SPLIT.jsonl, one {"audio": path, "text": str[, "id", "speaker"]} a line;
                         relative audio paths are resolved from the manifest's directory

Bad input inside a corpus (missing, unreadable, empty, truncated or non-finite audio; a
transcript line without text; an audio file with no transcript; a malformed manifest line)
is skipped, logged with its path and reason, and counted: the counts per split and reason
land in the dataset's ``metadata.json`` (``builder.info.metadata["skipped"]``). A missing or
empty ``manual_dir`` is fatal, with the expected layout in the message.

Scale: with ``DownloadConfig(beam_runner=...)`` or ``beam_options=...`` the same builders run
as Apache Beam pipelines (TFDS's Beam support): LibriSpeech fans out per chapter directory,
MLS and manifests read their transcript files with ``beam.io.ReadFromText`` (split by the
runner), and skips become Beam counters (``audiochat_jax:SPLIT/skipped/REASON``) that are
copied into the metadata when the pipeline ends. Tested with the DirectRunner; docs/datasets.md
shows Dataflow, Flink and Spark.
"""
from __future__ import annotations

import collections
import functools
import glob
import json
import os
import re
import unicodedata
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from audiochat_jax.audio import io as audio_io

if __name__ == "__main__":
    # `python -m` runs this file as `__main__`: hand over to the importable module before any
    # builder is defined here (TFDS finds a builder's files, and Beam pickles its functions,
    # by module name; defining them twice would also register each name twice).
    from audiochat_jax.data import speech_datasets as _module
    _module.main()
    raise SystemExit(0)

SAMPLE_RATE = 16000
_NAMESPACE = "audiochat_jax"


# Sentence punctuation, brackets, dashes and quotes are prosody, not words; "%", "&", "@"
# are words ("percent") and stay for the tokenizer to judge.
_SENTENCE_PUNCT = frozenset('.,!?;:"\u2026\u00a1\u00bf\u00b7')
_BRACKET_DASH_QUOTE = frozenset({"Pd", "Ps", "Pe", "Pi", "Pf"})


def normalize_text(text: str) -> str:
    """Transcript normalisation shared by all corpora: Unicode NFKC, lower case, typographic
    apostrophes to ``'``, sentence punctuation, brackets, dashes and quotes to spaces, whitespace
    collapsed ("Seven plus twelve." -> "seven plus twelve"). Letters, digits and symbols are
    never dropped (a digit would silently vanish); whether they are in a model's alphabet is
    the tokenizer's call."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("`", "'")
    text = "".join(" " if c in _SENTENCE_PUNCT or unicodedata.category(c) in _BRACKET_DASH_QUOTE
                   else c for c in text)
    return " ".join(text.split())


def speech_features(**extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
    """The speech record schema, plus corpus-specific ``extra`` fields."""
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE,
                                     file_format=None),
        "text": tfds.features.Text(),
        "speaker": tfds.features.Text(),
        **extra,
    })


class Skip(NamedTuple):
    """An input record left out of the dataset, and why."""
    path: str
    reason: str  # short tag, the counter name: "bad_audio", "no_transcript", ...
    detail: str


def load_example(path: str, uid: str, text: str, speaker: str) -> dict[str, Any] | Skip:
    """Decodes one utterance into a record (16 kHz int16), or a Skip naming the problem."""
    if not text.strip():
        return Skip(path, "empty_transcript", f"utterance {uid} has an empty transcript")
    try:
        wave = audio_io.load_audio(path, SAMPLE_RATE)
    except audio_io.AudioError as e:
        reason = "missing_audio" if e.problem == "no such file" else "bad_audio"
        return Skip(path, reason, str(e))
    return {"id": uid, "audio": audio_io.float_to_int16(wave), "text": normalize_text(text),
            "speaker": speaker}


def _key_examples(records: Iterable[dict | Skip], split: str,
                  on_skip: Callable[[str, Skip], None]) -> Iterator[tuple[str, dict]]:
    for rec in records:
        if isinstance(rec, Skip):
            logging.warning("%s: skipped %s (%s): %s", split, rec.path, rec.reason, rec.detail)
            on_skip(split, rec)
        else:
            yield rec["id"], rec


def _beam_count(split: str, skip: Skip) -> None:
    import apache_beam as beam
    beam.metrics.Metrics.counter(_NAMESPACE, f"{split}/skipped/{skip.reason}").inc()


def _beam_unit(unit: Any, split: str, records_fn: Callable) -> Iterator[tuple[str, dict]]:
    yield from _key_examples(records_fn(unit), split, _beam_count)


class ManualSpeechBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: split discovery, skip accounting, generator or Beam execution.

    A subclass implements ``_units(manual_dir) -> {split: (units, kind)}`` where ``kind`` is
    "list" (a Python list of work units, e.g. directories) or "lines" (a text file whose
    lines are the units), and ``_records(unit, split, manual_dir) -> Iterable[dict | Skip]``
    as a static/class method (it is pickled to Beam workers).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    EXTRA_FEATURES: dict = {}
    # No download URLs, so no checksums file. Also sidesteps tfds 4.9.10's code_path lookup,
    # which imports `importlib_resources` (a PyPI backport tfds only declares for Python<3.9).
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=speech_features(**self.EXTRA_FEATURES), supervised_keys=("audio", "text"),
            metadata=tfds.core.MetadataDict(skipped={}))

    def _download_and_prepare(self, dl_manager, download_config):
        # Beam when the caller asked for a runner (also what `tfds build --beam_*` sets).
        self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
        self._skipped = collections.defaultdict(collections.Counter)
        super()._download_and_prepare(dl_manager, download_config)
        self.info.metadata["skipped"] = {s: dict(c) for s, c in sorted(self._skipped.items())}
        total = sum(sum(c.values()) for c in self._skipped.values())
        if total:
            logging.warning("%s: skipped %d records: %s (see the warnings above for each path)",
                            self.name, total, self.info.metadata["skipped"])

    def _split_generators(self, dl_manager):
        root = os.path.abspath(os.path.expanduser(str(dl_manager.manual_dir)))
        units = self._units(root) if os.path.isdir(root) else {}
        if not units:
            raise FileNotFoundError(
                f"{self.name}: no corpus found in manual_dir {root!r}. Expected layout:\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}\nPass it with "
                f"DownloadConfig(manual_dir=...) or `tfds build --manual_dir=...`.")
        return {split: self._split(split, unit_list, kind, root)
                for split, (unit_list, kind) in sorted(units.items())}

    def _split(self, split: str, units, kind: str, root: str):
        records_fn = functools.partial(type(self)._records, split=split, manual_dir=root)
        if self._use_beam:
            import apache_beam as beam
            source = (beam.io.ReadFromText(units) if kind == "lines"
                      else beam.Create(sorted(units)))
            return (f"{split}_read" >> source
                    | f"{split}_decode" >> beam.FlatMap(_beam_unit, split=split,
                                                        records_fn=records_fn))
        return self._generate_examples(units, kind, split, records_fn)

    def _generate_examples(self, units, kind, split, records_fn):
        def count(split, skip):
            self._skipped[split][skip.reason] += 1
        if kind == "lines":
            with open(units, encoding="utf-8") as f:
                units = [line.rstrip("\n") for line in f]
        for unit in sorted(units) if kind == "list" else units:
            yield from _key_examples(records_fn(unit), split, count)

    def _process_pipeline_result(self, pipeline_result):
        from apache_beam.metrics.metric import MetricsFilter
        counters = pipeline_result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE))
        for c in counters["counters"]:
            split, _, reason = c.key.metric.name.split("/")
            self._skipped[split][reason] += int(c.committed or c.attempted or 0)


def _split_name(dirname: str) -> str:
    """LibriSpeech directory -> TFDS split name: "train-clean-100" -> "train_clean100"."""
    head, _, rest = dirname.partition("-")
    return head + ("_" + rest.replace("-", "") if rest else "")


class LibrispeechManual(ManualSpeechBuilder):
    """LibriSpeech (openslr.org/12) from the extracted tarballs; 16 kHz FLAC."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "  MANUAL_DIR/[LibriSpeech/]train-clean-100/19/198/19-198-0001.flac\n"
        "  MANUAL_DIR/[LibriSpeech/]train-clean-100/19/198/19-198.trans.txt\n"
        "  (extract any of train-clean-100.tar.gz, dev-clean.tar.gz, ... from openslr.org/12 "
        "into MANUAL_DIR)")
    EXTRA_FEATURES = {"chapter": tfds.features.Text()}
    _SPLIT_DIR = re.compile(r"^(train|dev|test)-(clean|other)(-\d+)?$")

    def _units(self, root):
        base = os.path.join(root, "LibriSpeech") if os.path.isdir(os.path.join(root, "LibriSpeech")) else root
        out = {}
        for d in sorted(os.listdir(base)):
            if self._SPLIT_DIR.match(d) and os.path.isdir(os.path.join(base, d)):
                chapters = sorted(glob.glob(os.path.join(base, d, "*", "*")))
                out[_split_name(d)] = ([c for c in chapters if os.path.isdir(c)], "list")
        return out

    @staticmethod
    def _records(chapter_dir: str, split: str, manual_dir: str):
        del split, manual_dir
        chapter, speaker = os.path.basename(chapter_dir), os.path.basename(os.path.dirname(chapter_dir))
        trans = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
        flacs = {os.path.basename(p)[:-5]: p for p in glob.glob(os.path.join(chapter_dir, "*.flac"))}
        texts = {}
        if os.path.exists(trans):
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    uid, _, text = line.strip().partition(" ")
                    if uid:
                        texts[uid] = (text, f"{trans}:{n}")
        for uid in sorted(set(texts) | set(flacs)):
            if uid not in texts:
                yield Skip(flacs[uid], "no_transcript", f"{uid} has no line in {trans}")
                continue
            rec = load_example(flacs.get(uid, os.path.join(chapter_dir, uid + ".flac")), uid,
                               texts[uid][0], speaker)
            if not isinstance(rec, Skip):
                rec["chapter"] = chapter
            yield rec


class MlsEnglishManual(ManualSpeechBuilder):
    """Multilingual LibriSpeech, English (openslr.org/94), FLAC or Opus release."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "  MANUAL_DIR/[mls_english[_opus]/]train/transcripts.txt   (lines 'ID<TAB>transcript')\n"
        "  MANUAL_DIR/[mls_english[_opus]/]train/audio/4800/10003/4800_10003_000000.{flac,opus}\n"
        "  (and dev/, test/; extract mls_english.tar.gz or mls_english_opus.tar.gz from "
        "openslr.org/94 into MANUAL_DIR)")
    EXTRA_FEATURES = {"book": tfds.features.Text()}

    def _units(self, root):
        bases = [root] + [os.path.join(root, d) for d in ("mls_english", "mls_english_opus")]
        for base in bases:
            found = {s: (os.path.join(base, s, "transcripts.txt"), "lines")
                     for s in ("train", "dev", "test")
                     if os.path.exists(os.path.join(base, s, "transcripts.txt"))}
            if found:
                return found
        return {}

    @staticmethod
    def _records(line: str, split: str, manual_dir: str):
        base = manual_dir
        if not os.path.isdir(os.path.join(base, split)):
            base = next(os.path.join(manual_dir, d) for d in ("mls_english", "mls_english_opus")
                        if os.path.isdir(os.path.join(manual_dir, d, split)))
        uid, _, text = line.strip().partition("\t")
        if not uid:
            return
        parts = uid.split("_")
        if len(parts) != 3:
            yield Skip(os.path.join(base, split, "transcripts.txt"), "bad_transcript_line",
                       f"id {uid!r} is not SPEAKER_BOOK_UTTERANCE")
            return
        stem = os.path.join(base, split, "audio", parts[0], parts[1], uid)
        path = next((stem + ext for ext in (".flac", ".opus") if os.path.exists(stem + ext)),
                    stem + ".flac")
        rec = load_example(path, uid, text, parts[0])
        if not isinstance(rec, Skip):
            rec["book"] = parts[1]
        yield rec


class SpeechManifest(ManualSpeechBuilder):
    """Any corpus described by JSONL manifests: MANUAL_DIR/SPLIT.jsonl."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "  MANUAL_DIR/train.jsonl, MANUAL_DIR/test.jsonl, ... (split name = file name), lines\n"
        '  {"audio": "clips/a.wav", "text": "hello there", "id": "a", "speaker": "s1"}\n'
        "  (id defaults to the audio file name, speaker to ''; relative paths are resolved "
        "from MANUAL_DIR)")

    def _units(self, root):
        return {os.path.basename(p)[:-6]: (p, "lines")
                for p in sorted(glob.glob(os.path.join(root, "*.jsonl")))}

    @staticmethod
    def _records(line: str, split: str, manual_dir: str):
        where = os.path.join(manual_dir, f"{split}.jsonl")
        if not line.strip():
            return
        try:
            entry = json.loads(line)
            audio, text = entry["audio"], entry["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            yield Skip(where, "bad_manifest_line",
                       f"{line[:80]!r}: need a JSON object with 'audio' and 'text' ({e!r})")
            return
        path = audio if os.path.isabs(audio) else os.path.join(manual_dir, audio)
        uid = str(entry.get("id") or os.path.splitext(os.path.basename(audio))[0])
        yield load_example(path, uid, str(text), str(entry.get("speaker", "")))


BUILDERS = {"librispeech_manual": LibrispeechManual, "mls_english_manual": MlsEnglishManual,
            "speech_manifest": SpeechManifest}


def main(argv: list[str] | None = None) -> None:
    """``python -m audiochat_jax.data.speech_datasets --dataset NAME --manual_dir DIR
    --data_dir OUT [--beam] [Beam pipeline options...]`` (see docs/datasets.md)."""
    import argparse
    p = argparse.ArgumentParser(
        description="Build a speech TFDS dataset from a local corpus. Unrecognised --flags are "
                    "Apache Beam pipeline options (e.g. --runner=DataflowRunner --project=P "
                    "--region=R --temp_location=gs://B/tmp --setup_file=./setup.py) and imply --beam.",
        epilog=__doc__.split("\n\n")[2])
    p.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    p.add_argument("--manual_dir", required=True, help="the extracted corpus (see the layouts above)")
    p.add_argument("--data_dir", required=True, help="TFDS data dir to write (local or gs://)")
    p.add_argument("--beam", action="store_true", help="run as a Beam pipeline (DirectRunner "
                   "unless --runner=... is given)")
    args, beam_args = p.parse_known_args(argv)
    kw = {}
    if args.beam or beam_args:
        from apache_beam.options.pipeline_options import PipelineOptions
        kw["beam_options"] = PipelineOptions(beam_args or ["--runner=DirectRunner"])
    builder = BUILDERS[args.dataset](data_dir=args.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=args.manual_dir, **kw))
    print(builder.data_path)
    print({s: i.num_examples for s, i in builder.info.splits.items()},
          "skipped:", builder.info.metadata["skipped"])


