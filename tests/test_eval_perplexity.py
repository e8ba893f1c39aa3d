"""Perplexity and greedy answers of the eval's prompt paths against a direct recomputation.

The reference is the plain Llama on one unpadded row (token ids for the text path, an
explicit concatenation of embeddings for the audio path) with a numpy log-softmax; the eval
packs padded batches through models.speech_llm.splice. Same weights, float32: 1e-4.
"""
import numpy as np
import pytest

import jax.numpy as jnp

from eval_fixtures import make_speech_llm, make_world
from audiochat_jax.eval import perplexity
from audiochat_jax.inference.prompting import Prompter, content_parts, response_ids
from audiochat_jax.inference.speech_model import SpeechModel
from audiochat_jax.models.generate import generate
from audiochat_jax.models.llama import Llama
from audiochat_jax.text.chat_template import encode_dialog
from speech_fixtures import tone

TEXTS = ["the cat sat on a mat", "what is seven plus twelve", "where does anna live"]
REPLIES = ["red cat", "blue dog is seven", "anna"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("eval_ppl"))
    return SpeechModel.load(make_speech_llm(world), batch_rows=2, bucket_samples=4000)


def _ref_nll(model, embeddings, n_prompt, targets):
    """Summed NLL of ``targets`` following ``n_prompt`` slots of one row [1, L, dim]."""
    n = embeddings.shape[1]
    logits = Llama(model.llm_config).apply({"params": model.llm_params}, embeddings=embeddings,
                                           positions=jnp.arange(n)[None], mask=jnp.ones((1, n), bool))
    logits = np.asarray(logits[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -sum(logp[n_prompt + j - 1, t] for j, t in enumerate(targets))


def _embed(model, ids):
    return np.asarray(Llama(model.llm_config).apply({"params": model.llm_params}, jnp.asarray([ids]),
                                                    method=Llama.embed))[0]


def test_text_path_nll_matches_plain_llama_on_the_dialog_tokens(model):
    tok = model.tokenizer
    prefix, suffix = content_parts(tok, [{"role": "user", "content": "x"}], 0)
    rows = [[prefix, tok.encode(t), suffix] for t in TEXTS]
    resp = [response_ids(tok, [{"role": "user", "content": t}], r) for t, r in zip(TEXTS, REPLIES)]
    nll, count = Prompter(model, batch_size=2).score(rows, resp)
    for i, (t, r) in enumerate(zip(TEXTS, REPLIES)):
        full = encode_dialog(tok, [{"role": "user", "content": t}, {"role": "assistant", "content": r}]).ids
        prompt = prefix + tok.encode(t) + suffix
        assert full[:len(prompt)] == prompt and full[len(prompt):] == resp[i]
        ref = _ref_nll(model, _embed(model, full)[None], len(prompt), resp[i])
        assert count[i] == len(resp[i])
        np.testing.assert_allclose(nll[i], ref, rtol=1e-4)
    result = perplexity.summarize(nll, count)
    assert result["ppl"] == pytest.approx(np.exp(nll.sum() / count.sum()))


def test_audio_path_nll_and_answers_match_an_explicit_concatenation(model):
    tok = model.tokenizer
    prefix, suffix = list(model.spec.prefix_ids), list(model.spec.suffix_ids)
    waves = [tone(k, s).astype(np.float32) / 32768 for k, s in ((1, 0.3), (2, 0.55))]
    emb, lengths = model.embed_audio(waves)
    assert emb.shape[0] == 2 and lengths[0] < lengths[1]
    audio = [emb[i, :lengths[i]] for i in range(2)]
    resp = [tok.encode(r) + [tok.eos_id] for r in REPLIES[:2]]
    p = Prompter(model, batch_size=2, max_new_tokens=6)
    nll, _ = p.score([[prefix, a, suffix] for a in audio], resp)
    answers = p.generate([[prefix, a, suffix] for a in audio])
    for i in range(2):
        x = np.concatenate([_embed(model, prefix), audio[i], _embed(model, suffix)])[None]
        np.testing.assert_allclose(nll[i], _ref_nll(
            model, np.concatenate([x, _embed(model, resp[i])[None]], 1), x.shape[1], resp[i]), rtol=1e-4)
        new, n = generate(model.llm_config, model.llm_params, embeddings=jnp.asarray(x),
                          mask=jnp.ones(x.shape[:2], bool), max_new_tokens=6, eos_id=tok.eos_id,
                          pad_id=tok.pad_id)
        ref = np.asarray(new)[0, :int(n[0])].tolist()
        assert answers[i] == [t for t in ref if t != tok.eos_id]


def test_embed_audio_is_independent_of_batching(model):
    waves = [tone(k, 0.2 + 0.1 * k).astype(np.float32) / 32768 for k in range(3)]
    emb, lengths = model.embed_audio(waves)
    for i, w in enumerate(waves):
        one, n = model.embed_audio([w])
        assert n[0] == lengths[i]
        np.testing.assert_allclose(one[0, :n[0]], emb[i, :n[0]], atol=1e-5)
