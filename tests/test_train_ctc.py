"""The ``ctc`` task: espeak speech -> on-device log-mel -> tiny conformer -> CTC, CER eval."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.data.input import InputConfig, SpeechInput
from audiochat_jax.models import conformer
from audiochat_jax.models.ctc import greedy_decode
from audiochat_jax.text.char_vocab import CharVocab, error_rates
from audiochat_jax.train import ctc, metrics

sys.path.insert(0, os.path.dirname(__file__))
from speech_fixtures import make_synthetic_dataset  # noqa: E402

SENTENCES = ([{"text": t, "split": "train"} for t in (
    "the cat sat on the mat", "seven plus twelve is nineteen", "where does anna live",
    "a red car", "open the door", "two times three is six")]
    + [{"text": t, "split": "test_seen"} for t in ("the dog sat", "anna has a red car", "six plus one")])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("speech")), SENTENCES)


def _config(data_dir):
    encoder = conformer.ConformerConfig(
        n_mels=16, d_model=16, n_layers=1, n_heads=2, ffn_dim=32, conv_kernel_size=7,
        subsampling="dw_striding", subsampling_factor=4, subsampling_channels=8,
        conv_norm="batch_norm", vocab_size=0, dropout=0.0, attention_dropout=0.0)
    c = ctc.full_config(encoder.to_dict(), FeatureConfig(n_mels=16).to_dict())
    c.total_steps = 8
    c.batch_size = 4
    c.mesh_shape = (2, 2, 2)
    c.log_every = 1
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 1
    c.ctc.data_dir = data_dir
    c.ctc.eval_splits = ("test_seen",)
    c.ctc.buckets = (48000,)
    c.ctc.spec_augment.update(freq_masks=1, freq_width=2, time_masks=1, time_width=0.05)
    c.ctc.noise_prob = 0.5
    return c


def test_ctc_smoke_run_trains_evaluates_and_exports(speech, tmp_path):
    from audiochat_jax.train import loop

    config = _config(speech)
    result = loop.train(config, str(tmp_path))
    assert result["status"] == "done"
    tb = str(tmp_path / "tensorboard")
    losses = metrics.read_scalars(tb, "train/loss")
    assert sorted(losses) == list(range(1, 9)) and all(np.isfinite(list(losses.values())))
    assert losses[8] < losses[1], losses
    cer = metrics.read_scalars(tb, "eval/test_seen/cer")[8]
    np.testing.assert_allclose(cer, result["eval"]["test_seen/cer"], rtol=1e-6)  # TB stores float32
    assert 0 < cer <= 1.5

    # The export is a conformer_ctc directory; batch-norm statistics were trained.
    enc_cfg, variables, meta = conformer.load(str(tmp_path / "model"))
    assert enc_cfg.vocab_size == CharVocab.english().size and meta["features"]["n_mels"] == 16
    stats = jax.tree.leaves(variables["batch_stats"])
    assert stats and any(float(jnp.abs(s).max()) not in (0.0, 1.0) for s in stats)

    # Independent recomputation of the eval numbers from the exported model: features,
    # forward (eval mode), optax CTC per label token, greedy decode, jiwer CER.
    vocab = CharVocab.english()
    feat_cfg = FeatureConfig.from_dict(meta["features"])
    data = SpeechInput(InputConfig(data_dir=speech, split="test_seen", batch_size=4, buckets=(48000,),
                                   shuffle=False, repeat=False), tokenize=vocab.encode)
    model = conformer.ConformerCTC(enc_cfg)
    nll, labels, refs, hyps = 0.0, 0, [], []
    for batch in data:
        v = batch["valid"]
        feats, flen = log_mel(batch["audio"][v], batch["audio_lengths"][v], feat_cfg)
        logits, olen = model.apply(variables, feats, flen, train=False)
        lab = batch["labels"][v]
        pad = lambda n, size: (np.arange(size)[None] >= np.asarray(n)[:, None]).astype(np.float32)
        nll += float(optax.ctc_loss(logits, pad(olen, logits.shape[1]), lab,
                                    pad(batch["label_lengths"][v], lab.shape[1]),
                                    blank_id=vocab.blank_id).sum())
        labels += int(batch["label_lengths"][v].sum())
        refs += list(batch["text"][v])
        hyps += [vocab.decode(ids) for ids in greedy_decode(logits, olen, vocab.blank_id)]
    assert len(refs) == 3
    np.testing.assert_allclose(result["eval"]["test_seen/loss"], nll / labels, rtol=1e-4)
    np.testing.assert_allclose(result["eval"]["test_seen/cer"], error_rates(refs, hyps)["cer"], rtol=1e-12)


def test_vocab_size_mismatch_is_named(speech):
    config = _config(speech)
    config.encoder.vocab_size = 5
    with pytest.raises(ValueError, match=r"config.encoder.vocab_size=5 .* 29 classes"):
        ctc.ctc_task(config, None)
