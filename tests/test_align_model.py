"""Model pieces of alignment against independent references: the projector vs numpy, the
splice vs an unpadded token-id forward of each row, the loss terms vs numpy, trainable masks."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from audiochat_jax.models import speech_llm
from audiochat_jax.models.llama import Llama, LlamaConfig, init_params
from audiochat_jax.models.projector import Projector, ProjectorConfig
from audiochat_jax.train import align


def test_projector_stacks_frames_and_masks_padding_like_numpy():
    cfg = ProjectorConfig(in_dim=3, out_dim=5, stack=2, kind="linear")
    frames = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    lengths = np.array([5, 3], np.int32)
    frames[1, 3:] = 0  # the encoder zeroes frames past each length
    variables = nn.unbox(Projector(cfg).init(jax.random.key(0), frames, lengths))
    w = np.asarray(variables["params"]["linear"]["kernel"])
    b = np.random.default_rng(1).standard_normal(5).astype(np.float32)
    variables["params"]["linear"]["bias"] = b
    out, out_lengths = Projector(cfg).apply(variables, frames, lengths)
    padded = np.concatenate([frames, np.zeros((2, 1, 3), np.float32)], axis=1)  # T=5 -> 6
    want = padded.reshape(2, 3, 6) @ w + b
    want[1, 2:] = 0  # ceil(3 / 2) = 2 real embeddings in row 1
    assert out_lengths.tolist() == [3, 2]
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="in_dim=3"):
        Projector(cfg).apply(variables, frames[..., :2], lengths)
    with pytest.raises(ValueError, match="ProjectorConfig.kind"):
        ProjectorConfig(in_dim=3, out_dim=5, kind="conv")


@pytest.fixture(scope="module")
def llm():
    cfg = LlamaConfig(vocab_size=50, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=32,
                      max_seq_len=64, dtype="float32", param_dtype="float32")
    params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x,
                          nn.unbox(init_params(cfg, jax.random.key(0))))
    return cfg, params


def test_splice_equals_unpadded_token_forward_for_audio_and_text_paths(llm):
    cfg, params = llm
    rng = np.random.default_rng(0)
    prefix, suffix = [1, 7, 8, 9], [10, 11]
    content = rng.integers(3, 50, (3, 6)).astype(np.int32)
    content_lengths = np.array([6, 2, 4], np.int32)
    response = rng.integers(3, 50, (3, 5)).astype(np.int32)
    response_lengths = np.array([3, 5, 1], np.int32)
    # Text path (token ids) and "audio" path (the same tokens' embeddings) through splice.
    text = speech_llm.build_prompt(cfg, params, prefix, suffix, content, content_lengths, response, response_lengths)
    emb = speech_llm.embed_tokens(cfg, params, content)
    audio = speech_llm.build_prompt(cfg, params, prefix, suffix, emb, content_lengths, response, response_lengths)
    got_text = np.asarray(speech_llm.response_logits(cfg, params, text, 5))
    got_audio = np.asarray(speech_llm.response_logits(cfg, params, audio, 5))
    model = Llama(cfg)
    for i in range(3):
        ids = prefix + content[i, :content_lengths[i]].tolist() + suffix + response[i, :response_lengths[i]].tolist()
        n = len(ids)
        assert int(text.lengths[i]) == n and np.asarray(text.mask[i]).sum() == n
        ref = np.asarray(model.apply({"params": params}, jnp.array([ids]), positions=jnp.arange(n)[None],
                                     mask=jnp.ones((1, n), bool)))[0]
        start = n - response_lengths[i]
        want = ref[start - 1: n - 1]  # logits predicting response tokens 0..r-1
        np.testing.assert_allclose(got_text[i, :response_lengths[i]], want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_audio[i, :response_lengths[i]], want, atol=1e-5, rtol=0)


def test_distill_kl_and_chamfer_match_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((2, 3, 7)), rng.standard_normal((2, 3, 7))
    w = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    T = 2.0
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    pt = np.exp(log_softmax(t / T))
    want = T * T * np.sum(np.sum(pt * (log_softmax(t / T) - log_softmax(s / T)), -1) * w)
    np.testing.assert_allclose(float(align.distill_kl(jnp.array(s), jnp.array(t), w, T)), want, rtol=1e-5)
    assert float(align.distill_kl(jnp.array(s), jnp.array(s), w, T)) == pytest.approx(0.0, abs=1e-6)

    a, b = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 5, 3))
    la, lb = np.array([3]), np.array([4])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    cos = unit(a[0, :3]) @ unit(b[0, :4]).T
    want = np.mean(1 - cos.max(1)) + np.mean(1 - cos.max(0))
    got = align.chamfer_cosine(jnp.array(a), jnp.array(la), jnp.array(b), jnp.array(lb))
    np.testing.assert_allclose(float(got[0]), want, rtol=1e-5)


def test_trainable_modes_freeze_the_named_parts():
    paths = ["['encoder']['pre_encode']['conv_0']['kernel']", "['encoder']['layers_0']['ff']['kernel']",
             "['encoder']['layers_1']['ff']['kernel']", "['encoder']['layers_10']['ff']['kernel']",
             "['ctc_head']['kernel']", "['projector']['fc1']['kernel']"]

    def frozen(mode, n=11):
        regexes = [re.compile(p) for p in align.frozen_patterns(mode, n)]
        return [p for p in paths if any(r.search(p) for r in regexes)]

    assert frozen("all") == []
    assert frozen("projector") == paths[:5]
    assert frozen("top:1") == paths[:3] + [paths[4]]          # layers_10 (the top one) trains
    assert frozen("top:10") == paths[:2] + [paths[4]]        # layers_1..10 train, layers_0 frozen
    with pytest.raises(ValueError, match="trainable='top:12'"):
        align.frozen_patterns("top:12", 11)
