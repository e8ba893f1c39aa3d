"""The ``lm`` task: chat dialogs -> assistant-only targets -> a few real training steps."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiochat_jax.models import model_dir
from audiochat_jax.data.mini_world import MiniWorld
from audiochat_jax.models.llama import Llama, LlamaConfig
from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
from audiochat_jax.train import lm, loop, metrics


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small mini world: train/eval dialog files and a sentencepiece model trained on them."""
    root = tmp_path_factory.mktemp("lm")
    world = MiniWorld(0, n_lm_dialogs=240, n_asr_train=200, n_asr_test=20, n_eval=10)
    dialogs = world.lm_dialogs()
    spm = train_sentencepiece(world.tokenizer_corpus(), str(root / "spm"), vocab_size=400)
    lm.save_dialogs(str(root / "train.jsonl"), dialogs[:200])
    lm.save_dialogs(str(root / "eval.jsonl"), dialogs[200:])
    return root, spm, dialogs


def test_targets_are_exactly_the_assistant_replies(corpus):
    root, spm, dialogs = corpus
    tok = Tokenizer(spm)
    loaded = lm.load_dialogs(str(root / "train.jsonl"))
    ids, is_target, lengths, truncated = lm.tokenize_dialogs(tok, loaded, 128, "train.jsonl")
    assert truncated == 0
    batch = next(lm.DialogBatches(ids, is_target, lengths, batch_size=len(ids), seed=0, shuffle=False))
    for i, d in enumerate(dialogs[:200]):
        targets = batch["targets"][i][batch["weights"][i] > 0].tolist()
        replies = [m["content"] for m in d.messages if m["role"] == "assistant"]
        # Every assistant turn, each closed by </s>, and nothing of the user turns.
        assert targets.count(tok.eos_id) == len(replies)
        pieces, cur = [], []
        for t in targets:
            if t == tok.eos_id:
                pieces.append(tok.decode(cur).strip())
                cur = []
            else:
                cur.append(t)
        assert pieces == [r.strip() for r in replies]
        # Inputs are the targets shifted by one; the mask covers exactly the real tokens.
        n = lengths[i]
        np.testing.assert_array_equal(batch["tokens"][i, 1:n - 1], batch["targets"][i, :n - 2])
        # (the last token has no next token to predict, so it is left out)
        assert batch["mask"][i].sum() == min(n, 129) - 1


def test_loss_is_weighted_cross_entropy_on_targets(corpus):
    root, spm, _ = corpus
    tok = Tokenizer(spm)
    ids, is_target, lengths, _ = lm.tokenize_dialogs(tok, lm.load_dialogs(str(root / "eval.jsonl")), 96, "")
    batch = next(lm.DialogBatches(ids, is_target, lengths, batch_size=8, seed=3))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                      ffn_dim=64, dtype="float32")
    model = Llama(cfg)
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                          model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                     positions=jnp.zeros((1, 4), jnp.int32), mask=jnp.ones((1, 4), bool))["params"],
                          is_leaf=lambda x: hasattr(x, "unbox"))
    loss, aux = lm.lm_loss(model, {"params": params}, {k: jnp.asarray(v) for k, v in batch.items()})
    # Reference: numpy log-softmax at the weighted positions only.
    logits = np.asarray(model.apply({"params": params}, batch["tokens"], positions=batch["positions"],
                                    mask=batch["mask"]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    w = batch["weights"]
    np.testing.assert_allclose(float(loss), -(picked * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["tokens_sum"]), w.sum())


def _tiny_llama(vocab_size):
    cfg = LlamaConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                      ffn_dim=64, dtype="float32")
    model = Llama(cfg)
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                          model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32),
                                     positions=jnp.zeros((1, 4), jnp.int32), mask=jnp.ones((1, 4), bool))["params"],
                          is_leaf=lambda x: hasattr(x, "unbox"))
    return model, {"params": params}


def test_packed_rows_give_the_same_loss_as_one_dialog_per_row(corpus):
    """Packing is exact: segment masking and restarted positions leave every target's
    log-probability as it is with one dialog per row (fp32, rtol 1e-5)."""
    root, spm, _ = corpus
    tok = Tokenizer(spm)
    ids, is_target, lengths, _ = lm.tokenize_dialogs(tok, lm.load_dialogs(str(root / "train.jsonl")), 96, "")
    model, variables = _tiny_llama(tok.vocab_size)
    plain = next(lm.DialogBatches(ids, is_target, lengths, batch_size=len(ids), seed=0, shuffle=False))
    n_rows = len(lm.pack_rows(np.arange(len(ids)), lengths, 96))
    assert n_rows < 0.7 * len(ids)  # short dialogs share rows
    packed = next(lm.DialogBatches(ids, is_target, lengths, batch_size=n_rows, seed=0, shuffle=False,
                                   pack=True))
    assert packed["weights"].sum() == plain["weights"].sum() == is_target[:, 1:].sum()
    assert packed["segment_ids"].max() >= 2
    loss_plain, aux_plain = lm.lm_loss(model, variables, {k: jnp.asarray(v) for k, v in plain.items()})
    loss_packed, aux_packed = lm.lm_loss(model, variables, {k: jnp.asarray(v) for k, v in packed.items()})
    np.testing.assert_allclose(float(loss_packed), float(loss_plain), rtol=1e-5)
    np.testing.assert_allclose(float(aux_packed["accuracy"]), float(aux_plain["accuracy"]), rtol=1e-5)


def test_packed_stream_resumes_exactly_across_epochs(corpus):
    root, spm, _ = corpus
    tok = Tokenizer(spm)
    ids, is_target, lengths, _ = lm.tokenize_dialogs(tok, lm.load_dialogs(str(root / "train.jsonl")), 96, "")
    stream = lm.DialogBatches(ids, is_target, lengths, batch_size=8, seed=5, pack=True)
    batches = [next(stream) for _ in range(40)]  # > 2 epochs of ~130 rows
    resumed = lm.DialogBatches(ids, is_target, lengths, batch_size=8, seed=5, pack=True)
    resumed.set_state({"index": 33})
    for want in batches[33:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # Each epoch uses every dialog's targets exactly once.
    rows = lm.pack_rows(np.random.default_rng([5, 0]).permutation(len(ids)), lengths, 96)
    assert sorted(np.concatenate(rows).tolist()) == list(range(len(ids)))


def test_lm_smoke_run_trains_evaluates_and_exports(corpus, tmp_path):
    root, spm, _ = corpus
    config = loop.base_config()
    config.task = "lm"
    config.total_steps = 30
    config.batch_size = 16
    config.mesh_shape = (2, 2, 2)
    config.log_every = 5
    config.eval_every = 15
    config.optimizer.learning_rate = 1e-2
    config.optimizer.warmup_steps = 5
    config.lm = lm.task_config()
    config.lm.dialogs = str(root / "train.jsonl")
    config.lm.eval_dialogs = str(root / "eval.jsonl")
    config.lm.tokenizer = spm
    config.lm.seq_len = 96
    config.lm.pack = True
    config.lm.model.update(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
    result = loop.train(config, str(tmp_path))
    assert result["status"] == "done"

    tb = str(tmp_path / "tensorboard")
    losses = metrics.read_scalars(tb, "train/loss")
    assert losses[30] < 0.75 * losses[5], losses
    assert metrics.read_scalars(tb, "train/tokens_per_s")[30] > 0
    evals = metrics.read_scalars(tb, "eval/loss")
    assert sorted(evals) == [15, 30] and evals[30] < evals[15]

    # The export is a llama model directory with its tokenizer; it reproduces the eval loss.
    out = str(tmp_path / "model")
    meta, params = model_dir.load_model_dir(out, "llama")
    assert meta["tokenizer"] == "tokenizer.model" and os.path.isfile(os.path.join(out, "tokenizer.model"))
    cfg = LlamaConfig.from_dict(meta["config"])
    assert cfg.vocab_size == Tokenizer(spm).vocab_size and cfg.n_kv_heads == 2
    tok = Tokenizer(os.path.join(out, "tokenizer.model"))
    ids, is_target, lengths, _ = lm.tokenize_dialogs(tok, lm.load_dialogs(str(root / "eval.jsonl")), 96, "")
    batch = next(lm.DialogBatches(ids, is_target, lengths, batch_size=len(ids), seed=0, shuffle=False))
    loss, _ = lm.lm_loss(Llama(cfg), {"params": params}, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(float(loss), result["eval"]["loss"], rtol=1e-4)


def test_bad_dialog_file_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a dialog"):
        lm.load_dialogs(str(path))
