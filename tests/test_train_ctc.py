"""The ``ctc`` task: espeak speech -> on-device log-mel -> tiny conformer -> CTC, CER eval."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.data.input import InputConfig, SpeechInput
from audiochat_jax.models import conformer
from audiochat_jax.text.char_vocab import CharVocab
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

    # The eval numbers recomputed from the exported model with other tools: transformers'
    # ParakeetFeatureExtractor for the log-mels, the model's forward (eval mode), torch's
    # ctc_loss, a greedy decode written here and jiwer's CER.
    import jiwer
    import torch
    from transformers import ParakeetFeatureExtractor
    vocab = CharVocab.english()
    fc = FeatureConfig.from_dict(meta["features"])
    fe = ParakeetFeatureExtractor(feature_size=fc.n_mels, sampling_rate=fc.sample_rate, hop_length=fc.hop_length,
                                  n_fft=fc.n_fft, win_length=fc.win_length, preemphasis=fc.preemphasis)
    data = SpeechInput(InputConfig(data_dir=speech, split="test_seen", batch_size=4, buckets=(48000,),
                                   shuffle=False, repeat=False), tokenize=vocab.encode)
    model = conformer.ConformerCTC(enc_cfg)
    nll, labels, refs, hyps = 0.0, 0, [], []
    for batch in data:
        v = batch["valid"]
        waves = [a[:n] for a, n in zip(batch["audio"][v], batch["audio_lengths"][v])]
        out = fe(waves, sampling_rate=fc.sample_rate, return_tensors="np", return_attention_mask=True)
        feats, flen = out["input_features"], out["attention_mask"].sum(1)
        logits, olen = model.apply(variables, jnp.asarray(feats), jnp.asarray(flen), train=False)
        logp = torch.log_softmax(torch.from_numpy(np.asarray(logits, np.float32)), -1)
        lab, lab_len = batch["labels"][v], batch["label_lengths"][v]
        nll += float(torch.nn.functional.ctc_loss(logp.transpose(0, 1), torch.from_numpy(lab).long(),
                                                  torch.from_numpy(np.asarray(olen)).long(),
                                                  torch.from_numpy(lab_len).long(), blank=vocab.blank_id,
                                                  reduction="sum"))
        labels += int(lab_len.sum())
        refs += list(batch["text"][v])
        for row, n in zip(np.asarray(logits).argmax(-1), np.asarray(olen)):
            best = [int(c) for k, c in enumerate(row[:n]) if k == 0 or c != row[k - 1]]
            hyps.append(vocab.decode([c for c in best if c != vocab.blank_id]))
    assert len(refs) == 3
    # transformers' log-mels differ from ours by <= 5e-4 (tests/test_features.py); here the
    # two losses came out equal to float32 precision, and every greedy decision the same.
    np.testing.assert_allclose(result["eval"]["test_seen/loss"], nll / labels, rtol=1e-4)
    np.testing.assert_allclose(result["eval"]["test_seen/cer"], jiwer.cer(refs, hyps), rtol=1e-9)


def test_vocab_size_mismatch_is_named(speech):
    config = _config(speech)
    config.encoder.vocab_size = 5
    with pytest.raises(ValueError, match=r"config.encoder.vocab_size=5 .* 29 classes"):
        ctc.ctc_task(config, None)
