"""The tf.data input pipeline for speech: TFDS speech records -> fixed-shape numpy batches.

    it = SpeechInput(InputConfig(data_dir=".../speech/1.0.0", split="train", batch_size=32),
                     tokenize=char_vocab.encode, responses=load_responses("responses.jsonl"))
    batch = next(it)           # host-local numpy dict, one of len(buckets) padded shapes
    state = it.get_state()     # JSON-able; saved with the checkpoint
    it.set_state(state)        # resume: the next batch is exactly the one that would have come

Per host, per epoch, in order (each step is tf.data / TFDS, TF kept on the CPU and quiet):
1. ``tfds.split_for_jax_process(split)``: this host's even slice of the split
   (``jax.process_index/count``), read with file shuffling seeded by (seed, epoch, host).
2. Per example (parallel map): audio int16 -> float32 / 32768, the transcript tokenised with
   the supplied ``tokenize(text) -> list[int]`` (CTC char vocab or the LLM tokenizer), and
   optionally the precomputed response joined by id (``responses``: id -> token ids).
3. Checks: an example longer than the largest bucket, with a label or response longer than
   its maximum, with an empty label, or with no response when responses are joined is
   dropped — counted per reason in ``it.stats`` and logged with its id, never silently.
4. Seeded shuffle buffer, then ``bucket_by_sequence_length`` with ``pad_to_bucket_boundary``:
   audio is padded to the smallest of ``buckets`` (sample counts) that holds it, labels to
   ``max_label_length``, responses to ``max_response_length``, so a train step compiles
   ``len(buckets)`` times, not per batch (``it.batch_shapes`` lists them for AOT compiles).
5. Prefetch (AUTOTUNE); ``options.deterministic = True`` so the order is a pure function of
   (dataset, config, epoch) — the basis of exact resume.

Batch keys: "audio" float32 [b, bucket] (or "features" float32 [b, bucket // hop, n_mels]
with ``feature_config``), "audio_lengths" (or "feature_lengths") int32 [b], "labels" int32
[b, max_label_length] + "label_lengths" [b] (with ``tokenize``), "response_ids" int32
[b, max_response_length] + "response_lengths" [b] (with ``responses``), "ids" and "text"
(str [b]), "valid" bool [b] — False only for the padding rows that fill the last partial
batches of a non-repeating (eval) pass; a training stream drops the partial batches at each
epoch's end (different examples every epoch, counted as ``stats["epoch_remainder"]``).

Exact resume. The state is ``{"epoch", "batch_in_epoch"}`` plus a fingerprint of everything
that shapes the order (split, batch size, buckets, seed, host slice, ...). ``set_state``
rebuilds that epoch's pipeline — identical order, because every source of randomness is
seeded from (seed, epoch, host) and tf.data runs deterministically — and skips
``batch_in_epoch`` batches. The cost of resuming is re-reading the part of the epoch already
consumed (milliseconds for the mini world; for LibriSpeech-960 at most one epoch of reads).
A state from a different fingerprint is refused with a message naming the changed field.

Features: on device, by measurement. Per 10 ms, log-mel is 80 float32 = 320 B and the audio
160 float32 samples = 640 B: computing features in the pipeline would halve a host->device
copy that is already small (32 x 4 s = 8 MB a batch), at a large host-CPU cost. bench/input.py on this 2-core CPU (heavily shared,
load ~12, 2026-11; batch 32, buckets 2 s / 4 s): the pipeline gives 127 examples/s with raw
audio but only 46 examples/s with log-mel computed on the host, while ``log_mel`` inside the
step costs 99 / 374 ms of a 10.2 / 21.5 s stand-in conformer-CTC step (1.0% / 1.7%). So the
default yields audio and the step computes features (where SpecAugment also runs);
``feature_config`` stays for consumers without a device step (e.g. offline feature dumps).
Pipeline vs that stand-in consumer: 73x (target >= 5x).
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import os
import weakref
from typing import Any, Callable, Mapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

STATE_VERSION = 1

# Live iterators, closed at interpreter exit: a tf.data iterator still running its
# numpy_function callbacks while Python finalises stalls the exit for minutes (observed here).
_LIVE: "weakref.WeakSet[SpeechInput]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for it in list(_LIVE):
        it.close()


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What the pipeline reads and the shapes it yields (all plain JSON-able fields)."""
    data_dir: str  # a prepared TFDS dataset directory, e.g. WORK/speech/mini_speech/1.0.0
    split: str = "train"
    batch_size: int = 32  # per host
    buckets: tuple[int, ...] = (64000, 128000, 256000)  # padded audio lengths, samples at 16 kHz
    max_label_length: int = 256
    max_response_length: int = 64
    shuffle: bool = True
    shuffle_buffer: int = 2048
    seed: int = 0
    repeat: bool = True  # False: one pass; last partial batches padded with valid=False rows
    feature_config: Optional[dict] = None  # FeatureConfig dict: log-mel on the host instead of audio

    def __post_init__(self):
        buckets = tuple(int(b) for b in self.buckets)
        object.__setattr__(self, "buckets", buckets)
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
            raise ValueError(f"InputConfig.buckets={self.buckets}: need increasing positive sample counts")
        if self.batch_size < 1:
            raise ValueError(f"InputConfig.batch_size={self.batch_size} must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"InputConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["buckets"] = list(self.buckets)
        return d


def load_responses(path: str) -> dict[str, list[int]]:
    """Reads a JSONL file of ``{"id": str, "response_ids": [int, ...]}`` records."""
    table = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                table[str(rec["id"])] = [int(t) for t in rec["response_ids"]]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON record {{\"id\": str, \"response_ids\": "
                                 f"[int, ...]}}, got {line.strip()[:80]!r} ({e})") from e
    return table


def _tf():
    """TensorFlow, kept off accelerators (JAX owns them) and quiet."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):
        pass  # already initialised, or no such device type: nothing to hide
    return tf


class SpeechInput:
    """Host-local iterator of padded speech batches with exact ``get_state``/``set_state``."""

    def __init__(self, config: InputConfig, tokenize: Optional[Callable[[str], Sequence[int]]] = None,
                 responses: Optional[Mapping[str, Sequence[int]]] = None, *,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        import tensorflow_datasets as tfds
        self.config = config
        self._tokenize = tokenize
        self._responses = responses
        self._pindex = jax.process_index() if process_index is None else process_index
        self._pcount = jax.process_count() if process_count is None else process_count
        try:
            self._builder = tfds.builder_from_directory(config.data_dir)
        except Exception as e:  # tfds raises several types for a wrong path
            raise FileNotFoundError(
                f"InputConfig.data_dir={config.data_dir!r} is not a prepared TFDS dataset "
                f"(expected dataset_info.json inside, e.g. WORK/speech/NAME/1.0.0): {e}") from e
        if config.split not in self._builder.info.splits:
            raise ValueError(f"InputConfig.split={config.split!r} not in {config.data_dir}; "
                             f"available: {sorted(self._builder.info.splits)}")
        self._features = None
        if config.feature_config is not None:
            from audiochat_jax.audio.features import FeatureConfig
            self._features = FeatureConfig.from_dict(config.feature_config)
        self.stats: collections.Counter = collections.Counter()  # drop reasons, this epoch
        self._epoch, self._batch_in_epoch = 0, 0
        self._it = None
        _LIVE.add(self)

    # ----------------------------------------------------------------- shapes & state
    @property
    def batch_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The padded shapes of every possible batch (one per bucket), for AOT compiles."""
        c, out = self.config, []
        for bucket in c.buckets:
            shapes = {"audio_lengths": (c.batch_size,), "valid": (c.batch_size,)}
            if self._features is not None:
                from audiochat_jax.audio.features import num_frames
                shapes["features"] = (c.batch_size, int(num_frames(bucket, self._features)),
                                      self._features.n_mels)
                shapes["feature_lengths"] = shapes.pop("audio_lengths")
            else:
                shapes["audio"] = (c.batch_size, bucket)
            if self._tokenize is not None:
                shapes.update(labels=(c.batch_size, c.max_label_length), label_lengths=(c.batch_size,))
            if self._responses is not None:
                shapes.update(response_ids=(c.batch_size, c.max_response_length),
                              response_lengths=(c.batch_size,))
            out.append(shapes)
        return out

    def _fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"data_dir": os.path.abspath(c.data_dir), "split": c.split, "batch_size": c.batch_size,
                "buckets": list(c.buckets), "max_label_length": c.max_label_length,
                "max_response_length": c.max_response_length, "shuffle": c.shuffle,
                "shuffle_buffer": c.shuffle_buffer, "seed": c.seed, "repeat": c.repeat,
                "process_index": self._pindex, "process_count": self._pcount}

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "epoch": self._epoch, "batch_in_epoch": self._batch_in_epoch,
                "fingerprint": self._fingerprint()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"input state version {state.get('version')!r}, expected {STATE_VERSION}")
        now = self._fingerprint()
        changed = {k: (v, now.get(k)) for k, v in state["fingerprint"].items() if now.get(k) != v}
        if changed:
            raise ValueError(f"input state was saved with a different pipeline: {changed} "
                             "(saved, now); restore with the same InputConfig and host count, or "
                             "start the data stream afresh")
        self._epoch, self._batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._it = None  # rebuilt lazily at the saved position

    # ----------------------------------------------------------------- the tf.data graph
    def _epoch_seed(self, salt: int) -> int:
        return int(np.random.SeedSequence([self.config.seed, self._epoch, self._pindex, salt])
                   .generate_state(1)[0] & 0x7FFFFFFF)

    def _check(self, ident, n_samples, n_labels, n_resp, has_resp) -> bool:
        """Keeps or drops one example; every drop is counted and logged with its id."""
        c, reason = self.config, None
        if n_samples > c.buckets[-1]:
            reason = f"audio_too_long (> {c.buckets[-1]} samples, the largest bucket)"
        elif self._tokenize is not None and n_labels > c.max_label_length:
            reason = f"label_too_long (> max_label_length={c.max_label_length})"
        elif self._tokenize is not None and n_labels == 0:
            reason = "empty_label"
        elif self._responses is not None and not has_resp:
            reason = "no_response (id missing from the responses table)"
        elif self._responses is not None and n_resp > c.max_response_length:
            reason = f"response_too_long (> max_response_length={c.max_response_length})"
        if reason is None:
            self.stats["kept"] += 1
            return True
        key = reason.split(" ")[0]
        if self.stats[key] < 10:
            logging.warning("%s[%s]: dropped %s: %s", self.config.data_dir, self.config.split,
                            ident.decode() if isinstance(ident, bytes) else ident, reason)
        self.stats[key] += 1
        return False

    def _dataset(self):
        tf = _tf()
        import tensorflow_datasets as tfds
        c = self.config
        options = tf.data.Options()
        options.deterministic = True
        split = tfds.split_for_jax_process(c.split, process_index=self._pindex,
                                           process_count=self._pcount)
        ds = self._builder.as_dataset(split=split, shuffle_files=c.shuffle, read_config=tfds.ReadConfig(
            shuffle_seed=self._epoch_seed(0), options=options))

        table = ragged = None
        if self._responses is not None:
            keys = list(self._responses)
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.string), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
            ragged = tf.ragged.constant([list(self._responses[k]) for k in keys], dtype=tf.int32,
                                        ragged_rank=1) if keys else None
        tokenize = self._tokenize

        def prepare(ex):
            audio = ex["audio"]
            out = {"audio": tf.cast(audio, tf.float32) / 32768.0,
                   "audio_lengths": tf.shape(audio)[0], "ids": ex["id"], "text": ex["text"]}
            n_labels = n_resp = tf.constant(0)
            has_resp = tf.constant(True)
            if tokenize is not None:
                labels = tf.numpy_function(lambda t: np.asarray(tokenize(t.decode()), np.int32),
                                           [ex["text"]], tf.int32, stateful=False)
                labels.set_shape([None])
                n_labels = tf.shape(labels)[0]
                out["labels"], out["label_lengths"] = labels, n_labels
            if table is not None:
                row = table.lookup(ex["id"])
                has_resp = row >= 0
                resp = ragged[tf.maximum(row, 0)] if ragged is not None else tf.zeros([0], tf.int32)
                n_resp = tf.shape(resp)[0]
                out["response_ids"], out["response_lengths"] = resp, n_resp
            out["_check"] = (n_labels, n_resp, has_resp)
            return out

        def keep(ex):  # a sequential filter: _check's counters need no lock
            n_labels, n_resp, has_resp = ex["_check"]
            ok = tf.numpy_function(self._check, [ex["ids"], ex["audio_lengths"], n_labels, n_resp,
                                                 has_resp], tf.bool, stateful=True)
            ok.set_shape([])
            return ok

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.filter(keep).map(lambda ex: {k: v for k, v in ex.items() if k != "_check"})
        if c.shuffle:
            ds = ds.shuffle(c.shuffle_buffer, seed=self._epoch_seed(1))
        padded = {"audio": [None], "audio_lengths": [], "ids": [], "text": []}
        if tokenize is not None:
            padded.update(labels=[c.max_label_length], label_lengths=[])
        if table is not None:
            padded.update(response_ids=[c.max_response_length], response_lengths=[])
        # Bucket i holds lengths in [b_{i-1} + 1, b_i]; padded to b_i (= boundary - 1).
        ds = ds.bucket_by_sequence_length(
            lambda ex: ex["audio_lengths"], bucket_boundaries=[b + 1 for b in c.buckets],
            bucket_batch_sizes=[c.batch_size] * (len(c.buckets) + 1), padded_shapes=padded,
            pad_to_bucket_boundary=True, drop_remainder=c.repeat)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    # ----------------------------------------------------------------- iteration
    def __iter__(self):
        return self

    def close(self) -> None:
        """Stops the background tf.data work; the next ``next()`` restarts at the same position."""
        self._it = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start_epoch(self):
        self.stats = collections.Counter()
        ds = self._dataset()
        if self._batch_in_epoch:
            ds = ds.skip(self._batch_in_epoch)  # replay: same order, so the same batches
        self._it = ds.as_numpy_iterator()

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start_epoch()
        for _ in range(2):
            try:
                batch = next(self._it)
                break
            except StopIteration:
                kept, yielded = self.stats["kept"], self._batch_in_epoch * self.config.batch_size
                if self.config.repeat:
                    self.stats["epoch_remainder"] = max(kept - yielded, 0)
                logging.info("%s[%s] epoch %d done: %d batches, %s", self.config.data_dir,
                             self.config.split, self._epoch, self._batch_in_epoch, dict(self.stats))
                if not self.config.repeat:
                    raise
                if self._batch_in_epoch == 0:
                    raise ValueError(
                        f"{self.config.data_dir}[{self.config.split}] gives no full batch of "
                        f"{self.config.batch_size} on this host ({dict(self.stats)}); lower "
                        "InputConfig.batch_size or raise buckets / max lengths")
                self._epoch, self._batch_in_epoch = self._epoch + 1, 0
                self._start_epoch()
        self._batch_in_epoch += 1
        return self._finish(batch)

    def _finish(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = self.config.batch_size
        out = {k: v.astype(np.int32) if v.dtype.kind == "i" else v for k, v in batch.items()}
        out["ids"] = np.array([s.decode() for s in batch["ids"]], dtype=object)
        out["text"] = np.array([s.decode() for s in batch["text"]], dtype=object)
        n = len(out["ids"])
        out["valid"] = np.arange(b) < n
        if n < b:  # the last partial batch of a one-pass (eval) stream
            out = {k: v if k == "valid" else np.concatenate(
                [v, np.full((b - n,) + v.shape[1:], "" if v.dtype == object else 0, v.dtype)])
                for k, v in out.items()}
        if self._features is not None:
            from audiochat_jax.audio.features import log_mel
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                feats, flen = log_mel(out.pop("audio"), out.pop("audio_lengths"), self._features)
            out["features"], out["feature_lengths"] = np.asarray(feats), np.asarray(flen)
        return out


def global_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Host-local numpy batch -> global ``jax.Array``s sharded over the mesh's batch axes.

    Every host passes its own ``[b, ...]`` rows; the result has ``b * process_count`` rows,
    split over ('data', 'fsdp') by ``parallel.sharding.batch_sharding``. String fields
    ("ids", "text") stay host-local numpy (they never enter a jitted step).
    """
    from audiochat_jax.parallel.sharding import batch_sharding
    out = {}
    for key, value in batch.items():
        if value.dtype == object or value.dtype.kind in "US":
            out[key] = value
            continue
        sharding = batch_sharding(mesh, value.ndim)
        global_rows = value.shape[0] * jax.process_count()
        ways = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
        if global_rows % ways:
            raise ValueError(f"batch of {global_rows} rows ({value.shape[0]} per host) cannot be split "
                             f"{ways} ways over the mesh's data x fsdp axes; make "
                             f"InputConfig.batch_size a multiple of {ways // np.gcd(ways, jax.process_count())}")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
