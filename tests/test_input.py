"""The tf.data speech pipeline: fixed bucket shapes, joins, counted drops, exact resume,
per-host slices, and global arrays on a mesh of 8 fake devices.

The dataset is a tiny TFDS builder written here with the contract schema (id, audio int16
16 kHz, text, speaker). Every sample of utterance i's audio equals i + 1, so a batch row
proves its audio, id, transcript, labels and response all belong to the same example.
"""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from audiochat_jax.data.input import InputConfig, SpeechInput, Target, global_batch, load_responses

N_TRAIN = 30
WORDS = ["yes", "no", "cat", "dog", "red", "blue", "one", "two"]


def _lengths(n, seed):
    return np.random.default_rng(seed).integers(800, 6000, n)


class TinySpeech(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    # tests/ is not a package; TFDS would look for checksum files next to the builder.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=16000,
                                         file_format=None),
            "text": tfds.features.Text(),
            "speaker": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, N_TRAIN), "test": self._generate_examples(100, 11)}

    def _generate_examples(self, start, n):
        lengths = _lengths(n, start)
        lengths[-1] = 9000 if start == 0 else lengths[-1]  # one utterance too long for the buckets
        for k in range(n):
            i = start + k
            yield f"utt{i:03d}", {"id": f"utt{i:03d}", "audio": np.full(lengths[k], i + 1, np.int16),
                                  "text": _text(i), "speaker": f"spk{i % 3}"}


def _text(i):
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 4))


def tokenize(text):
    return [ord(c) - 96 if c != " " else 27 for c in text]


def _response(ident):
    i = int(ident[3:])
    return list(range(1, 2 + i % 5))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    builder = TinySpeech(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return builder.data_dir


@pytest.fixture
def make():
    """SpeechInput factory; closes every iterator when the test ends (not at interpreter exit)."""
    made = []

    def _make(*args, **kw):
        made.append(SpeechInput(*args, **kw))
        return made[-1]
    yield _make
    for it in made:
        it.close()


def _config(data_dir, **kw):
    base = dict(data_dir=data_dir, split="train", batch_size=4, buckets=(2000, 4000, 6000),
                max_label_length=20, max_response_length=8, shuffle_buffer=16, seed=3)
    base.update(kw)
    return InputConfig(**base)


def _responses():
    return {f"utt{i:03d}": _response(f"utt{i:03d}") for i in range(N_TRAIN) if i != 5}


def _check_rows(batch, it):
    """Every valid row is internally consistent; shapes are one of the declared bucket shapes."""
    shapes = {k: v.shape for k, v in batch.items() if k not in ("ids", "text")}
    assert shapes in it.batch_shapes
    for r in np.flatnonzero(batch["valid"]):
        i = int(batch["ids"][r][3:])
        n = batch["audio_lengths"][r]
        assert (batch["audio"][r, :n] * 32768 == i + 1).all() and not batch["audio"][r, n:].any()
        assert batch["text"][r] == _text(i)
        want = tokenize(_text(i))
        assert batch["label_lengths"][r] == len(want)
        np.testing.assert_array_equal(batch["labels"][r], want + [0] * (20 - len(want)))
        resp = _response(batch["ids"][r])
        assert batch["response_lengths"][r] == len(resp)
        np.testing.assert_array_equal(batch["response_ids"][r], resp + [0] * (8 - len(resp)))


def test_one_pass_yields_every_kept_example_once_with_fixed_shapes(make, data_dir):
    it = make(_config(data_dir, repeat=False), tokenize, _responses())
    batches = list(it)
    for b in batches:
        _check_rows(b, it)
        assert b["audio"].shape[1] in (2000, 4000, 6000)
        assert b["audio_lengths"][b["valid"]].max() <= b["audio"].shape[1]
        assert b["audio"].shape[1] == 2000 or b["audio_lengths"][b["valid"]].min() > \
            {4000: 2000, 6000: 4000}[b["audio"].shape[1]], "smallest bucket that fits"
    seen = sorted(i for b in batches for i in b["ids"][b["valid"]])
    # utt005 has no response and utt029 (9000 samples) exceeds the largest bucket.
    assert seen == [f"utt{i:03d}" for i in range(N_TRAIN) if i not in (5, 29)]
    assert it.stats["no_response"] == 1 and it.stats["audio_too_long"] == 1
    assert it.stats["kept"] == N_TRAIN - 2
    padding = [b for b in batches if not b["valid"].all()]
    for b in padding:
        assert (b["audio_lengths"][~b["valid"]] == 0).all() and (b["ids"][~b["valid"]] == "").all()


def test_label_and_response_limits_are_counted_drops(make, data_dir, caplog):
    it = make(_config(data_dir, repeat=False, max_label_length=8, max_response_length=3),
                     tokenize, _responses())
    seen = {i for b in it for i in b["ids"][b["valid"]]}
    too_long_label = {f"utt{i:03d}" for i in range(N_TRAIN) if len(tokenize(_text(i))) > 8}
    too_long_resp = {f"utt{i:03d}" for i in range(N_TRAIN) if len(_response(f"utt{i:03d}")) > 3}
    assert too_long_label and too_long_resp and not seen & (too_long_label | too_long_resp)
    assert it.stats["label_too_long"] == len(too_long_label - {"utt029"})
    assert sum(v for k, v in it.stats.items() if k != "kept") + it.stats["kept"] == N_TRAIN


def test_resume_from_saved_state_is_exact_across_epochs(make, data_dir):
    cfg = _config(data_dir)
    ref = make(cfg, tokenize, _responses())
    stream = [next(ref) for _ in range(12)]  # 28 kept / 4 per batch, minus remainders: > 1 epoch
    assert ref.get_state()["epoch"] >= 1
    for b in stream:
        _check_rows(b, ref)
        assert b["valid"].all()
    first_epoch = [tuple(b["ids"]) for b in stream[:5]]
    later = [tuple(b["ids"]) for b in stream[7:12]]
    assert first_epoch != later, "each epoch is reshuffled"

    it = make(cfg, tokenize, _responses())
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make(cfg, tokenize, _responses())
    resumed.set_state(state)
    for want in stream[5:12]:
        got = next(resumed)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])

    other = make(_config(data_dir, seed=4), tokenize, _responses())
    assert [tuple(next(other)["ids"]) for _ in range(5)] != first_epoch


def test_state_from_a_different_pipeline_is_refused(make, data_dir):
    state = make(_config(data_dir), tokenize).get_state()
    with pytest.raises(ValueError, match="batch_size.*same InputConfig"):
        make(_config(data_dir, batch_size=8), tokenize).set_state(state)


def test_hosts_read_disjoint_slices_that_cover_the_split(make, data_dir):
    per_host = []
    for p in range(2):
        it = make(_config(data_dir, split="test", repeat=False, shuffle=False, buckets=(6000,)),
                         tokenize, process_index=p, process_count=2)
        per_host.append({i for b in it for i in b["ids"][b["valid"]]})
    assert not per_host[0] & per_host[1]
    assert per_host[0] | per_host[1] == {f"utt{i:03d}" for i in range(100, 111)}
    assert abs(len(per_host[0]) - len(per_host[1])) <= 1


def test_features_in_the_pipeline_equal_log_mel_of_the_audio(make, data_dir):
    from audiochat_jax.audio.features import FeatureConfig, log_mel
    fc = FeatureConfig(n_mels=40)
    audio_it = make(_config(data_dir, repeat=False), tokenize)
    feat_it = make(_config(data_dir, repeat=False, feature_config=fc.to_dict()), tokenize)
    a, f = next(audio_it), next(feat_it)
    assert {k: v.shape for k, v in f.items() if k not in ("ids", "text")} in feat_it.batch_shapes
    want, want_len = log_mel(a["audio"], a["audio_lengths"], fc)
    np.testing.assert_array_equal(f["feature_lengths"], want_len)
    np.testing.assert_allclose(f["features"], want, atol=1e-5)
    assert "audio" not in f


def test_global_batch_shards_rows_over_data_and_fsdp(make, data_dir):
    from audiochat_jax.parallel.sharding import make_mesh
    mesh = make_mesh((4, 2, 1))
    batch = next(make(_config(data_dir, batch_size=8), tokenize))
    g = global_batch(batch, mesh)
    assert isinstance(g["ids"], np.ndarray) and g["ids"].dtype == object
    for key in ("audio", "audio_lengths", "labels", "valid"):
        assert isinstance(g[key], jax.Array) and g[key].shape == batch[key].shape
        np.testing.assert_array_equal(np.asarray(g[key]), batch[key])
        assert g[key].sharding.shard_shape(g[key].shape)[0] == 1  # 8 rows over 8 devices
    with pytest.raises(ValueError, match="multiple of 8"):
        global_batch({"x": np.zeros((6, 3), np.float32)}, mesh)


def test_bad_inputs_are_named(make, data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared TFDS dataset"):
        make(_config(str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="split='dev'.*available.*test.*train"):
        make(_config(data_dir, split="dev"))
    with pytest.raises(ValueError, match="buckets"):
        _config(data_dir, buckets=(4000, 2000))
    bad = tmp_path / "responses.jsonl"
    bad.write_text('{"id": "utt000", "response_ids": [1, 2]}\n{"id": "utt001"}\n')
    with pytest.raises(ValueError, match=r"responses.jsonl:2: expected a JSON record"):
        load_responses(str(bad))
    bad.write_text('{"id": "utt000", "response_ids": [1, 2]}\n\n')
    assert load_responses(str(bad)) == {"utt000": [Target((1, 2))]}
    bad.write_text('{"id": "u", "response_ids": [1], "prefix_ids": [5]}\n')
    with pytest.raises(ValueError, match="prefix_ids and suffix_ids come together"):
        load_responses(str(bad))


def _multi_targets():
    """Three targets per id, each with its own prompt; the tokens encode (id, target index)."""
    out = {}
    for i in range(N_TRAIN):
        out[f"utt{i:03d}"] = [Target(response=(i + 1, k + 1), prefix=(100 + k,) * (k + 1), suffix=(200 + i,),
                                     family=("respond", "repeat", "history")[k]) for k in range(3)]
    return out


def test_each_example_draws_one_of_its_targets_with_its_prompt(make, data_dir):
    table = _multi_targets()
    it = make(_config(data_dir, max_prefix_length=4, max_suffix_length=2), tokenize, table)
    assert it.families == ["history", "repeat", "respond"]
    drawn, epochs = {}, set()
    for _ in range(20):  # several epochs
        b = next(it)
        assert {k: v.shape for k, v in b.items() if k not in ("ids", "text")} in it.batch_shapes
        epochs.add(it.get_state()["epoch"])
        for r in range(4):
            i = int(b["ids"][r][3:])
            k = int(b["response_ids"][r, 1]) - 1
            assert b["response_ids"][r, 0] == i + 1 and b["response_lengths"][r] == 2
            t = table[b["ids"][r]][k]
            assert b["prefix_lengths"][r] == len(t.prefix) and tuple(b["prefix_ids"][r, :k + 1]) == t.prefix
            assert not b["prefix_ids"][r, k + 1:].any()
            assert b["suffix_lengths"][r] == 1 and b["suffix_ids"][r, 0] == 200 + i
            assert it.families[b["family"][r]] == t.family
            drawn.setdefault(b["ids"][r], set()).add(k)
    assert len(epochs) > 2
    assert sum(len(v) > 1 for v in drawn.values()) > len(drawn) // 2, "epochs draw other targets"


def test_multi_target_draws_resume_exactly(make, data_dir):
    cfg = _config(data_dir, max_prefix_length=4, max_suffix_length=2)
    ref = make(cfg, tokenize, _multi_targets())
    stream = [next(ref) for _ in range(10)]
    it = make(cfg, tokenize, _multi_targets())
    for _ in range(6):
        next(it)
    resumed = make(cfg, tokenize, _multi_targets())
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    for want in stream[6:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_prompt_longer_than_its_limit_is_a_counted_drop(make, data_dir):
    it = make(_config(data_dir, max_prefix_length=1, max_suffix_length=2, repeat=False, shuffle=False),
              tokenize, {k: v[1:] for k, v in _multi_targets().items()})  # prefixes of 2 and 3
    assert not [i for b in it for i in b["ids"][b["valid"]]]
    assert it.stats["prompt_too_long"] == N_TRAIN - 1  # utt029 is too long for the buckets first
    with pytest.raises(ValueError, match="some targets carry their prompt"):
        make(_config(data_dir), tokenize, {"utt000": [Target((1,), (2,), (3,))], "utt001": [Target((1,))]})


def test_family_weights_set_how_often_each_target_is_drawn(make, data_dir):
    only = make(_config(data_dir, max_prefix_length=4, max_suffix_length=2, family_weights="repeat=1,respond=0,history=0"),
                tokenize, _multi_targets())
    drawn = [only.families[f] for _ in range(8) for f, ok in zip(*(lambda b: (b["family"], b["valid"]))(next(only))) if ok]
    assert set(drawn) == {"repeat"}
    mixed = make(_config(data_dir, max_prefix_length=4, max_suffix_length=2, family_weights="respond=6,history=0"),
                 tokenize, _multi_targets())
    counts = {}
    for _ in range(60):
        b = next(mixed)
        for f in b["family"]:
            counts[mixed.families[f]] = counts.get(mixed.families[f], 0) + 1
    assert "history" not in counts and counts["respond"] > 3 * counts["repeat"] > 0  # 6:1 expected
    with pytest.raises(ValueError, match="'repeat' is not FAMILY=WEIGHT"):
        make(_config(data_dir, family_weights="repeat"), tokenize, _multi_targets())
