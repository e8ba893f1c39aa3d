"""KV-cache generation: greedy equals transformers' generate; batching with left/right padding
equals one prompt at a time; per-row EOS stop; embeddings entry; sampling; the CLI."""
import json

import jax
import numpy as np
import pytest
import torch

from audiochat_jax.convert.llama import convert_hf
from audiochat_jax.models.model_dir import load_model_dir
from audiochat_jax.models.generate import generate, sample_token
from audiochat_jax.models.llama import Llama, LlamaConfig
from llama_fixtures import make_hf_llama

PROMPTS = [[1, 5, 9, 33, 12], [1, 7], [1, 3, 4, 60]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    hf, path = make_hf_llama(tmp_path_factory.mktemp("gen") / "hf", n_kv_heads=2, vocab_size=67,
                             rope_theta=50000.0)
    cfg, params = convert_hf(path, param_dtype="float32", dtype="float32")
    return hf, cfg, params


def _pad(prompts, side):
    width = max(map(len, prompts)) + 1  # one extra pad column even for the longest row
    tokens, mask = np.zeros((len(prompts), width), np.int32), np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        sl = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        tokens[i, sl], mask[i, sl] = p, True
    return tokens, mask


def _one(cfg, params, prompt, n, eos_id):
    out, length = generate(cfg, params, tokens=np.array([prompt], np.int32),
                           mask=np.ones((1, len(prompt)), bool), max_new_tokens=n, eos_id=eos_id)
    return np.asarray(out)[0], int(length[0])


def test_32_greedy_tokens_equal_transformers(model):
    hf, cfg, params = model
    prompt = PROMPTS[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].numpy()
    out, length = _one(cfg, params, prompt, 32, eos_id=-1)  # -1: never stop early
    assert length == 32
    np.testing.assert_array_equal(out, ref)


def test_batched_left_and_right_padding_equal_unbatched_and_stop_at_eos(model):
    _, cfg, params = model
    n = 10
    free = _one(cfg, params, PROMPTS[2], n, eos_id=-1)[0]
    eos = int(free[3])  # a token row 2 produces at step 3: it must stop there
    singles = [_one(cfg, params, p, n, eos) for p in PROMPTS]
    first = int(np.flatnonzero(free == eos)[0])
    assert singles[2][1] == first + 1 and (singles[2][0][first + 1:] == 0).all()
    for side in ("left", "right"):
        tokens, mask = _pad(PROMPTS, side)
        out, lengths = generate(cfg, params, tokens=tokens, mask=mask, max_new_tokens=n, eos_id=eos)
        for i, (ref, ref_len) in enumerate(singles):
            np.testing.assert_array_equal(np.asarray(out)[i], ref, err_msg=f"{side} row {i}")
            assert int(lengths[i]) == ref_len


def test_generate_by_embeddings_equals_by_tokens(model):
    _, cfg, params = model
    tokens, mask = _pad(PROMPTS, "left")
    emb = jax.jit(lambda t: Llama(cfg).apply({"params": params}, t, method=Llama.embed))(tokens)
    by_tok = generate(cfg, params, tokens=tokens, mask=mask, max_new_tokens=6, eos_id=-1)[0]
    by_emb = generate(cfg, params, embeddings=emb, mask=mask, max_new_tokens=6, eos_id=-1)[0]
    np.testing.assert_array_equal(np.asarray(by_emb), np.asarray(by_tok))


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(model):
    _, cfg, params = model
    tokens, mask = _pad(PROMPTS, "left")
    kw = dict(tokens=tokens, mask=mask, max_new_tokens=8, eos_id=-1)
    greedy = np.asarray(generate(cfg, params, **kw)[0])
    a = np.asarray(generate(cfg, params, rng=jax.random.key(1), temperature=1.0, **kw)[0])
    b = np.asarray(generate(cfg, params, rng=jax.random.key(1), temperature=1.0, **kw)[0])
    c = np.asarray(generate(cfg, params, rng=jax.random.key(2), temperature=1.0, **kw)[0])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, greedy)
    nucleus = generate(cfg, params, rng=jax.random.key(1), temperature=1.0, top_p=1e-6, **kw)[0]
    np.testing.assert_array_equal(np.asarray(nucleus), greedy)
    with pytest.raises(ValueError, match="pass rng"):
        generate(cfg, params, temperature=0.7, **kw)


def test_sample_token_follows_softmax_and_top_p_support():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32)).repeat(4000, axis=0)
    draw = jax.jit(sample_token, static_argnums=(2, 3))
    counts = np.bincount(np.asarray(draw(logits, jax.random.key(0), 1.0, 1.0)), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)  # ~4 sigma at n=4000
    # top_p=0.7: the nucleus is {0, 1} (mass before token 2 is 0.8 >= 0.7), renormalised 5:3
    counts = np.bincount(np.asarray(draw(logits, jax.random.key(1), 1.0, 0.7)), minlength=4) / 4000
    assert counts[2] == counts[3] == 0
    np.testing.assert_allclose(counts[:2], [0.625, 0.375], atol=0.03)


def test_generate_cli_prints_reply_and_json(tmp_path, capsys):
    from audiochat_jax.convert.llama import main as convert_main
    from audiochat_jax.generate import main
    from audiochat_jax.text.chat_template import encode_dialog
    from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
    sentences = [f"the {c} {a} is number {n}" for c in ("red", "blue", "green") for a in ("cat", "dog")
                 for n in range(10)]
    spm_path = train_sentencepiece(sentences, tmp_path / "spm", vocab_size=300)
    tok = Tokenizer(spm_path)
    _, hf_dir = make_hf_llama(tmp_path / "hf", vocab_size=tok.vocab_size, n_layers=1)
    assert convert_main(["--src", hf_dir, "--out", str(tmp_path / "m"), "--param_dtype", "float32",
                         "--dtype", "float32"]) == 0
    capsys.readouterr()
    args = ["--ckpt", str(tmp_path / "m"), "--tokenizer", spm_path, "--prompt", "the red cat",
            "--prompt", "blue", "--max_new_tokens", "7"]
    assert main(args + ["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    meta, params = load_model_dir(str(tmp_path / "m"), "llama")
    for row, prompt in zip(rows, ["the red cat", "blue"]):
        ids = encode_dialog(tok, [{"role": "user", "content": prompt}]).ids
        assert row["prompt_ids"] == ids
        ref, n = _one(LlamaConfig.from_dict(meta["config"]), params, ids, 7, tok.eos_id)
        assert row["ids"] == ref[:n].tolist()
        assert row["text"] == tok.decode([t for t in row["ids"] if t != tok.eos_id])
    assert main(args) == 0
    # plain mode prints each reply followed by a newline (a random model's reply may hold some)
    assert capsys.readouterr().out == "".join(r["text"] + "\n" for r in rows)
