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
   optionally a precomputed response joined by id (``responses``: id -> token ids, or id ->
   [Target] with the prompt each was answered in).
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
[b, max_response_length] + "response_lengths" [b] + "family" int32 [b] (index into
``it.families``) with ``responses``; when the targets carry their prompts (data/responses.py
with an instruction pool), also "prefix_ids" [b, max_prefix_length] + "prefix_lengths" and
"suffix_ids" [b, max_suffix_length] + "suffix_lengths". An utterance with several targets
(one per instruction) gets one of them per epoch, drawn from (seed, epoch, id). "ids" and "text"
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

Features: on device. Per 10 ms, log-mel is 80 float32 = 320 B and the audio 160 float32
samples = 640 B: computing features in the pipeline would halve a host->device copy that is
already small (32 x 4 s = 8 MB a batch), at a large host-CPU cost (bench/input.py: on 2 cores
the pipeline yields about 2.7x more examples/s with raw audio than with host log-mel, while
``log_mel`` is 1-2% of a conformer-CTC step). So the default yields audio and the step
computes features (where SpecAugment also runs); ``feature_config`` stays for consumers
without a device step (e.g. offline feature dumps).
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import os
import weakref
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from audiochat_jax.util.config_fields import DictConfig

STATE_VERSION = 1

# Live iterators, closed at interpreter exit: a tf.data iterator still running its
# numpy_function callbacks while Python finalises stalls the exit for minutes (observed here).
_LIVE: "weakref.WeakSet[SpeechInput]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for it in list(_LIVE):
        it.close()


@dataclasses.dataclass(frozen=True)
class InputConfig(DictConfig):
    """What the pipeline reads and the shapes it yields (all plain JSON-able fields)."""
    data_dir: str  # a prepared TFDS dataset directory, e.g. WORK/speech/mini_speech/1.0.0
    split: str = "train"
    batch_size: int = 32  # per host
    buckets: tuple[int, ...] = (64000, 128000, 256000)  # padded audio lengths, samples at 16 kHz
    max_label_length: int = 256
    max_response_length: int = 64
    max_prefix_length: int = 128  # prompt tokens before / after the content (targets with prompts)
    max_suffix_length: int = 32
    # "family=weight,..." : how often an utterance's target of each family is drawn when it
    # has several (unlisted families weigh 1; "" = all equal)
    family_weights: str = ""
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
        parse_family_weights(self.family_weights)  # a bad spec fails here, not mid-epoch



class Target(NamedTuple):
    """One alignment target of an utterance: the LLM's response to the transcript in one
    prompt. ``prefix`` / ``suffix``: the prompt's token ids before / after the content (None:
    the consumer's default prompt); ``family``: the instruction family (text/instructions.py)."""
    response: tuple
    prefix: Optional[tuple] = None
    suffix: Optional[tuple] = None
    family: str = "respond"


def load_responses(path: str) -> dict[str, list[Target]]:
    """Reads a JSONL file of ``{"id": str, "response_ids": [int, ...]}`` records, optionally
    with ``"prefix_ids"``, ``"suffix_ids"`` and ``"family"`` (data/responses.py writes them);
    an id may have several records (one per instruction) -> ``{id: [Target, ...]}``."""
    table: dict[str, list[Target]] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                prompt = [tuple(int(t) for t in rec[k]) if k in rec else None for k in ("prefix_ids", "suffix_ids")]
                if (prompt[0] is None) != (prompt[1] is None):
                    raise KeyError("prefix_ids and suffix_ids come together")
                table.setdefault(str(rec["id"]), []).append(Target(
                    tuple(int(t) for t in rec["response_ids"]), *prompt, str(rec.get("family", "respond"))))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON record {{\"id\": str, \"response_ids\": "
                                 f"[int, ...]}}, got {line.strip()[:80]!r} ({e})") from e
    return table


def parse_family_weights(spec: str) -> dict[str, float]:
    """"respond=2,repeat=1" -> {"respond": 2.0, "repeat": 1.0}; errors name the bad item."""
    out = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise ValueError(f"family_weights={spec!r}: {item!r} is not FAMILY=WEIGHT with a weight >= 0")
        out[name.strip()] = weight
    return out


def _targets(value) -> list[Target]:
    """A responses-table value: a list of Targets, or (plain) one response's token ids."""
    value = list(value)
    if value and isinstance(value[0], Target):
        return value
    return [Target(tuple(int(t) for t in value))]


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
        self._responses = None if responses is None else {k: _targets(v) for k, v in responses.items()}
        with_prompt = {t.prefix is not None for ts in (self._responses or {}).values() for t in ts}
        if len(with_prompt) > 1:
            raise ValueError("responses: some targets carry their prompt (prefix_ids/suffix_ids) and some "
                             "do not; fill the missing ones with the default prompt first")
        self._prompts = with_prompt == {True}
        # Families present, sorted: batch["family"] indexes this list.
        self.families = sorted({t.family for ts in (self._responses or {}).values() for t in ts})
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
                              response_lengths=(c.batch_size,), family=(c.batch_size,))
            if self._prompts:
                shapes.update(prefix_ids=(c.batch_size, c.max_prefix_length), prefix_lengths=(c.batch_size,),
                              suffix_ids=(c.batch_size, c.max_suffix_length), suffix_lengths=(c.batch_size,))
            out.append(shapes)
        return out

    def _fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"data_dir": os.path.abspath(c.data_dir), "split": c.split, "batch_size": c.batch_size,
                "buckets": list(c.buckets), "max_label_length": c.max_label_length,
                "max_response_length": c.max_response_length, "max_prefix_length": c.max_prefix_length,
                "max_suffix_length": c.max_suffix_length, "family_weights": c.family_weights,
                "shuffle": c.shuffle,
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

    def _check(self, ident, n_samples, n_labels, n_resp, has_resp, n_prefix, n_suffix) -> bool:
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
        elif self._prompts and (n_prefix > c.max_prefix_length or n_suffix > c.max_suffix_length):
            reason = (f"prompt_too_long (prefix {n_prefix} > max_prefix_length={c.max_prefix_length} or "
                      f"suffix {n_suffix} > max_suffix_length={c.max_suffix_length})")
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

        table = None
        if self._responses is not None:
            # Every target of every id, flattened; an id owns rows [start, start + count).
            keys = list(self._responses)
            flat = [t for k in keys for t in self._responses[k]]
            counts = [len(self._responses[k]) for k in keys]
            starts = np.cumsum([0] + counts[:-1]).astype(np.int64)
            offsets = dict(zip(keys, starts.tolist()))
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.string), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
            starts, counts = tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)
            ragged = lambda rows: tf.ragged.constant([list(r) for r in rows] + [[]], dtype=tf.int32,  # noqa: E731
                                                     ragged_rank=1)
            responses = ragged(t.response for t in flat)
            prompts = (ragged(t.prefix for t in flat), ragged(t.suffix for t in flat)) if self._prompts else None
            family = tf.constant([self.families.index(t.family) for t in flat] + [0], tf.int32)
            # Within each id, the cumulative share of its targets' weights (ends at 1).
            weights = parse_family_weights(c.family_weights)
            w = np.array([weights.get(t.family, 1.0) for t in flat], np.float64)
            cum = np.zeros(len(flat) + 1, np.float64)
            for k in keys:
                s0, n = offsets[k], len(self._responses[k])
                part = w[s0:s0 + n]
                cum[s0:s0 + n] = np.cumsum(part) / part.sum() if part.sum() > 0 else np.arange(1, n + 1) / n
            cum = tf.constant(cum, tf.float64)
            # Which target an example gets: a pure function of (seed, epoch, id), so a resumed
            # epoch draws the same; every epoch draws anew.
            draw_seed = self._epoch_seed(2)
        tokenize = self._tokenize

        def prepare(ex):
            audio = ex["audio"]
            out = {"audio": tf.cast(audio, tf.float32) / 32768.0,
                   "audio_lengths": tf.shape(audio)[0], "ids": ex["id"], "text": ex["text"]}
            n_labels = n_resp = n_prefix = n_suffix = tf.constant(0)
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
                key = tf.stack([tf.constant(draw_seed, tf.int64), tf.strings.to_hash_bucket_fast(ex["id"], 2 ** 62)])
                u = tf.random.stateless_uniform([], key, dtype=tf.float64)
                r = tf.maximum(row, 0)
                within = tf.reduce_sum(tf.cast(tf.slice(cum, [starts[r]], [counts[r]]) <= u, tf.int64))
                within = tf.minimum(within, counts[r] - 1)
                j = tf.where(has_resp, starts[r] + within, tf.cast(tf.shape(family)[0] - 1, tf.int64))
                resp = responses[j]
                n_resp = tf.shape(resp)[0]
                out["response_ids"], out["response_lengths"], out["family"] = resp, n_resp, family[j]
                if prompts is not None:
                    prefix, suffix = prompts[0][j], prompts[1][j]
                    n_prefix, n_suffix = tf.shape(prefix)[0], tf.shape(suffix)[0]
                    out.update(prefix_ids=prefix, prefix_lengths=n_prefix, suffix_ids=suffix,
                               suffix_lengths=n_suffix)
            out["_check"] = (n_labels, n_resp, has_resp, n_prefix, n_suffix)
            return out

        def keep(ex):  # a sequential filter: _check's counters need no lock
            ok = tf.numpy_function(self._check, [ex["ids"], ex["audio_lengths"], *ex["_check"]],
                                   tf.bool, stateful=True)
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
            padded.update(response_ids=[c.max_response_length], response_lengths=[], family=[])
        if table is not None and prompts is not None:
            padded.update(prefix_ids=[c.max_prefix_length], prefix_lengths=[],
                          suffix_ids=[c.max_suffix_length], suffix_lengths=[])
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
    from audiochat_jax.parallel.sharding import batch_sharding, batch_shards
    out = {}
    for key, value in batch.items():
        if value.dtype == object or value.dtype.kind in "US":
            out[key] = value
            continue
        sharding = batch_sharding(mesh, value.ndim)
        global_rows = value.shape[0] * jax.process_count()
        ways = batch_shards(mesh)
        if global_rows % ways:
            raise ValueError(f"batch of {global_rows} rows ({value.shape[0]} per host) cannot be split "
                             f"{ways} ways over the mesh's data x fsdp axes; make "
                             f"InputConfig.batch_size a multiple of {ways // np.gcd(ways, jax.process_count())}")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
