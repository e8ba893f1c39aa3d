"""The align step's auxiliary CTC loss (config.align.ctc_weight) at step level.

* its value is an independent reference's: the saved conformer CTC model run on its own
  (ConformerCTC, eval mode) and torch's ctc_loss on the batch's transcripts;
* its gradient trains the encoder + CTC head: CTC alone (ce_weight 0) falls over a few steps,
  the frozen LLM stays bitwise unchanged.

The tiny world is tests/align_fixtures.py's with the tones 4x longer, so every transcript
fits its frames (the stock clips are too short for any CTC alignment: 0.3 s = 7 frames).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

import align_fixtures
from align_fixtures import align_config, make_world
from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.models import conformer
from audiochat_jax.parallel import sharding
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.train import align, loop, optimizer, tasks

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    longer = [(u, s, text, 4 * sec) for u, s, text, sec in align_fixtures.UTTERANCES]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(align_fixtures, "UTTERANCES", longer)
        return make_world(tmp_path_factory.mktemp("align_ctc_world"))


def _config(world, *overrides):
    return align_config(world, "--config.align.buckets=(36000,)", "--config.align.ctc_weight=1.0",
                        "--config.align.ctc_max_label_length=32", *overrides)


def _setup(config):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    task = align.align_task(config, mesh)
    tx, schedule = optimizer.make_optimizer(config, task.frozen_patterns)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    return mesh, task, state, step


def _torch_ctc_per_label(world, batch) -> float:
    """Sum of torch CTC NLLs over the valid rows / their label count, from the saved model."""
    cfg, variables, meta = conformer.load(world["encoder"])
    vocab = CharVocab.from_dict(meta["vocab"])
    feats, feat_lengths = log_mel(batch["audio"], batch["audio_lengths"], FeatureConfig.from_dict(meta["features"]))
    logits, out_lengths = conformer.ConformerCTC(cfg).apply(variables, feats, feat_lengths)
    log_probs = torch.log_softmax(torch.from_numpy(np.asarray(logits, np.float64)), -1)
    rows = [i for i in range(len(batch["text"])) if batch["valid"][i]]
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in batch["text"]]
    labels = [vocab.encode(texts[i]) for i in rows]
    nll = torch.nn.functional.ctc_loss(
        log_probs[rows].transpose(0, 1), torch.tensor([x for ids in labels for x in ids]),
        torch.tensor([int(out_lengths[i]) for i in rows]), torch.tensor([len(ids) for ids in labels]),
        blank=vocab.blank_id, reduction="sum", zero_infinity=False)
    assert np.isfinite(float(nll)), "a transcript does not fit its frames: the world is too short"
    return float(nll) / sum(map(len, labels))


def test_aux_ctc_value_equals_torch_ctc_on_the_saved_ctc_model(world):
    # trainable=projector: the encoder runs in eval mode (batch-norm running statistics), as
    # the reference does; the head is the saved model's.
    config = _config(world, "--config.align.trainable=projector", "--config.total_steps=4")
    mesh, task, state, step = _setup(config)
    batch = next(task.train_data())
    with jax.set_mesh(mesh), sharding.axis_rules():
        _, m = step(state, task.frozen, tasks.device_batch(batch, mesh))
    assert float(m["ctc"]) > 0
    np.testing.assert_allclose(float(m["ctc"]), _torch_ctc_per_label(world, batch), rtol=1e-4)


def test_aux_ctc_alone_trains_the_encoder_and_leaves_the_llm_untouched(world):
    config = _config(world, "--config.align.ce_weight=0.0", "--config.total_steps=40",
                     "--config.optimizer.learning_rate=3e-3", "--config.optimizer.warmup_steps=2")
    mesh, task, state, step = _setup(config)
    batch = tasks.device_batch(next(task.train_data()), mesh)
    before = jax.tree.map(np.asarray, state.params["ctc_head"])
    losses = []
    with jax.set_mesh(mesh), sharding.axis_rules():
        for _ in range(config.total_steps):
            state, m = step(state, task.frozen, batch)
            losses.append(float(m["ctc"]))
    # The loss is the CTC term alone, and it falls (one fixed batch, 40 steps).
    np.testing.assert_allclose(float(m["loss"]), losses[-1], rtol=1e-6)
    assert losses[-1] < 0.5 * losses[0], losses
    moved = [not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params["ctc_head"]))]
    assert all(moved)
    for a, b in zip(jax.tree.leaves(task.frozen), jax.tree.leaves(world["llm_params"])):
        np.testing.assert_array_equal(np.asarray(a), b)
