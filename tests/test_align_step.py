"""The align task's step on a tiny world (tests/align_fixtures.py), on 8 fake CPU devices.

* the sharded step (data=2, fsdp=2, tensor=2) equals the single-device step (loss and params),
  with the LLM's layers scanned there (stacked on load) and unrolled on the one device;
* overfitting a tiny batch: loss -> ~0 and greedy generation from the audio prompt gives back
  the target responses; the frozen LLM params are bitwise unchanged and never in the
  optimizer state.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from align_fixtures import align_config, make_world
from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models import conformer, speech_llm
from audiochat_jax.models.llama import LlamaConfig
from audiochat_jax.models.projector import ProjectorConfig
from audiochat_jax.text.chat_template import audio_prompt_parts
from audiochat_jax.models.generate import generate
from audiochat_jax.parallel import sharding
from audiochat_jax.train import align, loop, optimizer, tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("align_world"))


def _setup(config, mesh):
    task = align.align_task(config, mesh)
    tx, schedule = optimizer.make_optimizer(config, task.frozen_patterns)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    return task, state, step


def _run(config, mesh, n_steps):
    task, state, step = _setup(config, mesh)
    data = task.train_data()
    losses = []
    with jax.set_mesh(mesh), sharding.axis_rules():
        for _ in range(n_steps):
            state, m = step(state, task.frozen, tasks.device_batch(next(data), mesh))
            losses.append({k: float(v) for k, v in m.items()})
    return task, state, losses


def test_sharded_step_equals_single_device_step(world):
    # Every loss term on, the encoder in train mode (batch-norm statistics updated).
    # Adam eps 1e-3 (not 1e-8): Adam divides each gradient by its own magnitude, so an entry
    # whose gradient is (mathematically) ~0 -- the depthwise-conv bias before batch norm, the
    # key bias under softmax -- turns float rounding (sums in another order on 8 devices)
    # into an lr-sized update of random sign (observed 1.4e-4 apart at eps=1e-8). With eps,
    # an update moves at most lr/eps = 0.5x a gradient's rounding error.
    config = align_config(world, "--config.total_steps=10", "--config.optimizer.eps=1e-3",
                          "--config.align.kl_weight=0.5",
                          "--config.align.kl_temperature=2.0", "--config.align.embed_weight=0.1",
                          "--config.align.projector.norm=rms")
    one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    eight = sharding.make_mesh((2, 2, 2))
    _, ref_state, ref = _run(config, one, 2)
    # The sharded run also scans the LLM's layers, stacked on load from the world's unrolled
    # checkpoint (align.llm_scan_layers): the same numbers through another program.
    config.align.llm_scan_layers = "true"
    task, state, got = _run(config, eight, 2)
    # Really sharded: the LLM over (fsdp, tensor), the projector and its Adam moments too.
    assert task.frozen["layers"]["mlp"]["gate"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert state.params["projector"]["fc1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    for r, g in zip(ref, got):
        assert r["kl"] > 0 and r["embed"] > 0
        for key in ("loss", "ce", "kl", "embed", "accuracy", "grad_norm"):
            np.testing.assert_allclose(g[key], r[key], atol=1e-5, rtol=0, err_msg=key)
    for a, b in zip(jax.tree.leaves(state.variables), jax.tree.leaves(ref_state.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_overfit_tiny_batch_then_audio_prompt_generates_the_targets(tmp_path_factory):
    # The targets are the frozen LLM's own greedy answers to the transcripts (reachable by
    # construction); head_scale=16 makes the LLM confident in them, as a trained one is, so a
    # CE near 0 is reachable (at scale 1 even the transcript prompt has CE ~3.1 on them).
    world = make_world(tmp_path_factory.mktemp("align_overfit"), head_scale=16.0)
    config = align_config(world, "--config.total_steps=300", "--config.optimizer.learning_rate=1e-2",
                          "--config.optimizer.warmup_steps=5", "--config.optimizer.weight_decay=0.0")
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    task, state, step = _setup(config, mesh)
    # One fixed batch: the 4 training utterances.
    batch = next(task.train_data())
    device_batch = tasks.device_batch(batch, mesh)
    n_llm = sum(x.size for x in jax.tree.leaves(task.frozen))
    with jax.set_mesh(mesh), sharding.axis_rules():
        for _ in range(config.total_steps):
            state, m = step(state, task.frozen, device_batch)
    print("overfit:", {k: float(v) for k, v in m.items()})
    assert float(m["loss"]) < 0.05 and float(m["accuracy"]) == 1.0, {k: float(v) for k, v in m.items()}

    # The LLM: bitwise what was saved, not part of the trained state, no optimizer moments.
    for a, b in zip(jax.tree.leaves(task.frozen), jax.tree.leaves(world["llm_params"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert set(state.params) == {"encoder", "projector", "ctc_head"}
    opt_sizes = sum(x.size for x in jax.tree.leaves(state.opt_state))
    trained = sum(x.size for x in jax.tree.leaves(state.params))
    # Adam moments for the trained tree only: the LLM's would add 2 * n_llm entries.
    assert opt_sizes <= 2 * trained + 16 < 2 * trained + 2 * n_llm, (opt_sizes, trained, n_llm)

    # Greedy generation from [prefix | audio | suffix] reproduces each target response.
    llm_cfg = LlamaConfig.from_dict(model_dir.read_model_config(world["llm"])["config"])
    enc_cfg, _, meta = conformer.load(world["encoder"])
    tok = world["tok"]
    prefix, suffix = audio_prompt_parts(tok)
    embedder = speech_llm.AudioEmbedder(enc_cfg, ProjectorConfig.from_dict(dict(
        config.align.projector.to_dict(), in_dim=enc_cfg.d_model, out_dim=llm_cfg.dim)), ctc_head=True)
    out = speech_llm.embed_audio(embedder, jax.device_get(state.variables), FeatureConfig.from_dict(meta["features"]),
                                 batch["audio"], batch["audio_lengths"])
    prompt = speech_llm.build_prompt(llm_cfg, world["llm_params"], prefix, suffix, out["embeddings"], out["lengths"])
    new, lengths = generate(llm_cfg, world["llm_params"], embeddings=prompt.embeddings, mask=prompt.mask,
                            max_new_tokens=12, eos_id=tok.eos_id, pad_id=0)
    for i, uid in enumerate(batch["ids"]):
        uid = uid.decode() if isinstance(uid, bytes) else str(uid)
        assert np.asarray(new[i, :lengths[i]]).tolist() == world["targets"][uid], uid
