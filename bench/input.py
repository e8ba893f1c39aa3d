"""Input pipeline throughput vs what a train step consumes, measured in the same run.

    python bench/input.py                         # synthetic 16 kHz dataset, mini-world sizes
    python bench/input.py --data_dir WORK/speech/mini_speech/1.0.0 --split train

Prints examples/s of ``audiochat_jax.data.input.SpeechInput`` (raw audio, the default, and
with log-mel computed in the pipeline), the on-device cost of ``log_mel`` per batch, and the
examples/s a train step consumes, then the ratio (target >= 5x).

The consumer is the real align train step (bench/align_step.py: log-mel on device, the
mini conformer, projector, splice, the frozen mini LLM's forward + backward, AdamW) on the
same batch shapes, timed per bucket and weighted by the bucket mix the pipeline actually
produced. Pipeline and step are timed one after the other on the same CPU (in training they
share it, which this does not model); the load average is printed beside the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402

from audiochat_jax.audio.features import FeatureConfig, log_mel  # noqa: E402
from audiochat_jax.data.input import InputConfig, SpeechInput  # noqa: E402


class BenchSpeech(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Synthetic records in the speech schema: noise-modulated tones, 1-4 s, char transcripts."""
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # bench/ is not a package
    N = 512

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=16000,
                                         file_format=None),
            "text": tfds.features.Text(), "speaker": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        words = ["what", "is", "the", "capital", "of", "france", "two", "plus", "three", "hello"]
        for i in range(self.N):
            n = int(rng.uniform(1.0, 4.0) * 16000)
            t = np.arange(n) / 16000
            wave = 0.3 * np.sin(2 * np.pi * 180 * t) * rng.uniform(0, 1, n)
            text = " ".join(rng.choice(words, int(rng.integers(3, 9))))
            yield str(i), {"id": f"b{i:05d}", "audio": (wave * 32767).astype(np.int16), "text": text,
                           "speaker": f"s{i % 7}"}


def tokenize(text: str) -> list[int]:
    return [ord(c) - 96 if "a" <= c <= "z" else 27 for c in text]


def pipeline_rate(config: InputConfig, n_batches: int) -> tuple[float, list[int]]:
    it = SpeechInput(config, tokenize)
    for _ in range(2):  # tf.data start-up and autotune warm-up
        next(it)
    buckets = []
    t0 = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
        buckets.append((b["audio"] if "audio" in b else b["features"]).shape[1])
    return n_batches * config.batch_size / (time.perf_counter() - t0), buckets


def timed(fn, *args, reps: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def align_step(batch: int):
    """``run(samples)``: one real align train step on a ``[batch, samples]`` audio batch."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from align_step import make_align_step
    root, steps = tempfile.mkdtemp(prefix="bench_align_"), {}

    def run(samples):
        if samples not in steps:
            steps[samples] = make_align_step(os.path.join(root, str(samples)), batch, samples)[0]
        return steps[samples]()
    return run


def main(argv=None) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import protocol
    before = protocol.load()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", help="a prepared TFDS speech dataset (default: build a synthetic one)")
    p.add_argument("--split", default="train")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--buckets", default="32000,64000", help="padded audio lengths in samples")
    p.add_argument("--num_batches", type=int, default=20, help="timed pipeline batches")
    args = p.parse_args(argv)
    buckets = tuple(int(b) for b in args.buckets.split(","))
    fc = FeatureConfig()

    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench_input_")
        builder = BenchSpeech(data_dir=tmp)
        builder.download_and_prepare()
        data_dir = builder.data_dir
    cfg = InputConfig(data_dir=data_dir, split=args.split, batch_size=args.batch_size, buckets=buckets,
                      max_label_length=128, shuffle_buffer=256)

    audio_rate, mix = pipeline_rate(cfg, args.num_batches)
    feat_cfg = InputConfig(**{**cfg.to_dict(), "feature_config": fc.to_dict()})
    feat_rate, _ = pipeline_rate(feat_cfg, args.num_batches)

    logmel_s = {b: timed(lambda a, l: log_mel(a, l, fc), jnp.zeros((args.batch_size, b), jnp.float32),
                         jnp.full((args.batch_size,), b, jnp.int32)) for b in buckets}
    run = align_step(args.batch_size)
    step_s = {b: timed(run, b, reps=3) for b in buckets}
    consumed = len(mix) * args.batch_size / sum(step_s[b] for b in mix)

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch_size}, "
          f"buckets {list(buckets)}, bucket mix {dict((b, mix.count(b)) for b in buckets)}")
    print(f"pipeline, raw audio (default):      {audio_rate:9.1f} examples/s")
    print(f"pipeline, log-mel on host:          {feat_rate:9.1f} examples/s")
    for b in buckets:
        print(f"bucket {b:6d}: log_mel on device {logmel_s[b] * 1e3:7.1f} ms, align step "
              f"{step_s[b] * 1e3:8.1f} ms ({100 * logmel_s[b] / step_s[b]:.1f}% of it)")
    print(f"align train step consumes {consumed:9.1f} examples/s")
    print(f"RATIO pipeline / consumer: {audio_rate / consumed:.1f}x (target >= 5x)")
    print(protocol.load_line(before))
    return {"pipeline": audio_rate, "consumed": consumed}


if __name__ == "__main__":
    main()
