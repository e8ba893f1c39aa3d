"""wav2vec2 in place of the conformer: ``ctc`` pre-trains it on waveforms, ``align`` loads that
export, and the aligned ``speech_llm`` directory reloads through the eval path.

The tiny world is tests/align_fixtures.py's (tone speech, random frozen Llama, its greedy
answers as targets); only the encoder differs from the conformer tests. The tasks run their
real init / loss / evaluate / export on one device (the 8-device SPMD compile of the same
steps costs minutes on 2 busy cores; tests/test_train_ctc.py and test_align_step.py cover
``loop.train`` and sharding with the conformer).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from align_fixtures import ENCODER, align_config, make_world
from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.data.input import InputConfig, SpeechInput
from audiochat_jax.models import conformer, speech_llm, wav2vec2
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.models.projector import Projector, ProjectorConfig
from audiochat_jax.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2CTC, Wav2Vec2Encoder
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.parallel import sharding
from audiochat_jax.train import align, ctc, loop, optimizer, tasks

# 2 convs, total stride 160 samples (10 ms frames: enough frames per character for CTC on
# the 0.3-0.55 s tones); pre-LN layers; time masking on so the model's own SpecAugment runs.
W2V = Wav2Vec2Config(
    hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, feat_extract_norm="layer",
    do_stable_layer_norm=True, conv_bias=True, conv_dim=(8, 8), conv_stride=(5, 32),
    conv_kernel=(10, 32), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0, attention_dropout=0.0, mask_time_prob=0.1, mask_time_length=2, ctc_vocab_size=0)
CTC_STEPS, ALIGN_STEPS = 6, 6


def _train(task, config, n_steps):
    """``n_steps`` of the task's real train step on one device -> (state, [metrics per step])."""
    mesh = _mesh1()
    tx, schedule = optimizer.make_optimizer(config, task.frozen_patterns)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    data, history = task.train_data(), []
    with jax.set_mesh(mesh), sharding.axis_rules():
        for _ in range(n_steps):
            state, m = step(state, task.frozen, tasks.device_batch(next(data), mesh))
            history.append({k: float(v) for k, v in m.items()})
    return state, history


def _mesh1():
    return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("w2v_world"))


def _ctc_config(data_dir):
    c = ctc.full_config(dict(kind="wav2vec2", **W2V.to_dict()), FeatureConfig().to_dict())
    c.total_steps, c.batch_size = CTC_STEPS, 4
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 1
    c.ctc.update(data_dir=data_dir, eval_splits=("test",), buckets=(9600,), max_label_length=32,
                 shuffle_buffer=16, noise_prob=0.5)
    c.ctc.spec_augment.update(freq_masks=0, time_masks=0)
    return c


@pytest.fixture(scope="module")
def ctc_run(world, tmp_path_factory):
    """The ``ctc`` task with encoder.kind="wav2vec2": a few steps, its eval, its export."""
    workdir = str(tmp_path_factory.mktemp("w2v_ctc"))
    config = _ctc_config(world["data"])
    task = ctc.ctc_task(config, _mesh1())
    state, history = _train(task, config, CTC_STEPS)
    result = {"train": history, "eval": task.evaluate(state.variables, task.frozen)}
    task.export(state.variables, os.path.join(workdir, "model"))
    return result, workdir


def test_ctc_task_trains_wav2vec2_on_waveforms_and_exports_a_wav2vec2_dir(world, ctc_run):
    result, workdir = ctc_run
    losses = [m["loss"] for m in result["train"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses

    out = os.path.join(workdir, "model")
    assert model_dir.read_model_config(out)["kind"] == wav2vec2.KIND
    cfg, variables, meta = wav2vec2.load(out)
    vocab = CharVocab.english()
    assert cfg.ctc_vocab_size == vocab.size and meta["vocab"] == vocab.to_dict()
    assert meta["features"]["sample_rate"] == 16000

    # The eval loss recomputed from the export on raw waveforms (no log-mel anywhere): the
    # model the task trained and evaluated is Wav2Vec2CTC on the audio itself.
    data = SpeechInput(InputConfig(data_dir=world["data"], split="test", batch_size=4, buckets=(9600,),
                                   max_label_length=32, shuffle=False, repeat=False), tokenize=vocab.encode)
    nll, labels = 0.0, 0
    pad = lambda n, size: (np.arange(size)[None] >= np.asarray(n)[:, None]).astype(np.float32)
    forward = jax.jit(Wav2Vec2CTC(cfg).apply)
    for batch in data:
        v = batch["valid"]
        logits, olen = forward(variables, batch["audio"][v], batch["audio_lengths"][v])
        lab = batch["labels"][v]
        nll += float(optax.ctc_loss(logits, pad(olen, logits.shape[1]), lab, pad(batch["label_lengths"][v], 32),
                                    blank_id=vocab.blank_id).sum())
        labels += int(batch["label_lengths"][v].sum())
    assert labels > 0
    np.testing.assert_allclose(result["eval"]["test/loss"], nll / labels, rtol=1e-4)

    # In embedder names: the CTC head (lm_head) becomes ctc_head, values untouched.
    cfg2, emb_vars, meta2 = speech_llm.load_encoder_dir(out)
    assert cfg2 == cfg and set(emb_vars["params"]) == {"encoder", "ctc_head"}
    for a, b in zip(jax.tree.leaves(emb_vars["params"]["ctc_head"]), jax.tree.leaves(variables["params"]["lm_head"])):
        np.testing.assert_array_equal(a, b)


def test_transcribe_reads_a_wav2vec2_ctc_dir_on_waveforms(world, ctc_run):
    """The cascade's ASR (inference.transcriber.Transcriber, used by evaluate) on a wav2vec2 export: its
    padded, batched log-probs equal Wav2Vec2CTC on each waveform alone."""
    from audiochat_jax.inference.transcriber import Transcriber
    out = os.path.join(ctc_run[1], "model")
    cfg, variables, _ = wav2vec2.load(out)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 7000, 5200)]
    model = Transcriber(out)
    log_probs, out_lengths = model.log_probs(waves, batch_rows=4, bucket_samples=1600)
    for i, w in enumerate(waves):
        logits, olen = Wav2Vec2CTC(cfg).apply(variables, jnp.asarray(w)[None], jnp.array([len(w)]))
        assert int(out_lengths[i]) == int(olen[0])
        np.testing.assert_allclose(log_probs[i, :int(olen[0])], jax.nn.log_softmax(logits[0]), atol=1e-4)
    assert len(model.decode(log_probs, out_lengths)) == 3


def test_encoder_dirs_of_every_kind_load_in_embedder_names(world, ctc_run, tmp_path):
    # The conformer_ctc directories written before wav2vec2 existed load unchanged.
    cfg, variables, _ = speech_llm.load_encoder_dir(world["encoder"])
    ref_cfg, ref_vars, _ = conformer.load(world["encoder"])
    assert cfg == ref_cfg and jax.tree.structure(variables) == jax.tree.structure(ref_vars)
    assert speech_llm.encoder_width(cfg) == ENCODER["d_model"] and speech_llm.input_kind(cfg) == "features"
    # An encoder-only wav2vec2 directory (what a converted HuBERT is): 16 kHz features and the
    # English vocabulary for a fresh CTC head, as documented.
    w_cfg, w_vars, _ = wav2vec2.load(os.path.join(ctc_run[1], "model"))
    bare = Wav2Vec2Config.from_dict({**w_cfg.to_dict(), "ctc_vocab_size": 0})
    wav2vec2.save(str(tmp_path / "bare"), bare, wav2vec2.encoder_variables(w_cfg, w_vars))
    cfg, variables, meta = speech_llm.load_encoder_dir(str(tmp_path / "bare"))
    assert set(variables["params"]) == {"encoder"} and cfg.ctc_vocab_size == CharVocab.english().size
    assert meta["vocab"] == CharVocab.english().to_dict() and meta["features"]["sample_rate"] == 16000
    with pytest.raises(ValueError, match=r"holds a 'llama' model; a speech encoder directory"):
        speech_llm.load_encoder_dir(world["llm"])


def test_log_mel_spec_augment_on_a_waveform_encoder_is_named(world):
    config = _ctc_config(world["data"])
    config.ctc.spec_augment.time_masks = 2
    with pytest.raises(ValueError, match=r"spec_augment.*encoder.kind='wav2vec2'.*mask_time_prob"):
        ctc.ctc_task(config, None)


def test_align_trains_wav2vec2_top_layer_and_export_reloads_through_eval(world, ctc_run, tmp_path):
    from audiochat_jax.inference.speech_model import SpeechModel

    enc_dir = os.path.join(ctc_run[1], "model")
    config = align_config({**world, "encoder": enc_dir}, f"--config.total_steps={ALIGN_STEPS}",
                          "--config.optimizer.warmup_steps=1", "--config.optimizer.learning_rate=3e-3",
                          "--config.align.trainable=top:1", "--config.align.ctc_weight=0.3")
    task = align.align_task(config, _mesh1())
    state, history = _train(task, config, ALIGN_STEPS)
    losses = [m["loss"] for m in history]
    assert losses[-1] < losses[0], losses
    assert all(np.isfinite(m["ctc"]) and m["ctc"] > 0 for m in history)  # CTC on wav2vec2 frames

    out = str(tmp_path / "aligned")
    task.export(state.variables, out)
    meta, trained = model_dir.load_model_dir(out, speech_llm.KIND)
    spec = speech_llm.SpeechLLMConfig.from_dict(meta["config"])
    assert spec.encoder_kind == "wav2vec2" and spec.ctc_head
    enc_cfg = spec.encoder_config()
    assert isinstance(enc_cfg, Wav2Vec2Config) and spec.projector["in_dim"] == W2V.hidden_size

    # "top:1" on wav2vec2 names: only layers_1 (and the projector) moved; the conv stack,
    # layers_0 and the CTC head are the pre-trained values bit for bit.
    _, pre, _ = speech_llm.load_encoder_dir(enc_dir)
    for name in pre["params"]["encoder"]:
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained["params"]["encoder"][name]),
                                                        jax.tree.leaves(pre["params"]["encoder"][name])))
        assert same == (name != "layers_1"), name
    for a, b in zip(jax.tree.leaves(trained["params"]["ctc_head"]), jax.tree.leaves(pre["params"]["ctc_head"])):
        np.testing.assert_array_equal(a, b)

    # The eval path (SpeechModel: SpeechLLMConfig.embedder, bucketed batch of 8 rows) gives
    # the embeddings of the encoder + projector applied to each utterance alone, unpadded.
    model = SpeechModel.load(out)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (4000, 9000)]
    got, got_n = model.embed_audio(waves)
    proj = ProjectorConfig.from_dict(spec.projector)
    encode, project = jax.jit(Wav2Vec2Encoder(enc_cfg).apply), jax.jit(Projector(proj).apply)
    for i, w in enumerate(waves):
        frames, flen = encode({"params": trained["params"]["encoder"]}, w[None], np.array([len(w)], np.int32))
        want, n = project({"params": trained["params"]["projector"]}, frames, flen)
        assert int(got_n[i]) == int(n[0]) > 0
        np.testing.assert_allclose(got[i, :int(n[0])], np.asarray(want[0, :int(n[0])]), atol=2e-5, rtol=0)


def test_speech_llm_dirs_without_encoder_kind_hold_conformers():
    d = dict(encoder=ConformerConfig(vocab_size=29, **ENCODER).to_dict(),
             projector=ProjectorConfig(in_dim=ENCODER["d_model"], out_dim=32).to_dict(),
             features=FeatureConfig(n_mels=32).to_dict(), llm={}, ctc_head=True)
    spec = speech_llm.SpeechLLMConfig.from_dict(d)
    assert spec.encoder_kind == "conformer" and spec.embedder().input_kind == "features"
    assert isinstance(spec.embedder().encoder, ConformerConfig)
    assert speech_llm.SpeechLLMConfig.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="encoder_kind='hubert'"):
        speech_llm.SpeechLLMConfig.from_dict({**d, "encoder_kind": "hubert"})
