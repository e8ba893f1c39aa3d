"""Converted Parakeet / NeMo conformers give transformers' ParakeetForCTC logits (fp32, 1e-4).

Tolerance: 1e-4 absolute on logits of O(1) magnitude — float32 accumulation-order noise
through a few layers is ~1e-6; a wrong transpose, mask or shift is >1e-2.
Frames past each output length are excluded: the reference attends from padded queries
to all keys (its output there is unused), ours zeroes them.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiochat_jax.convert import conformer as convert
from audiochat_jax.models import conformer
from audiochat_jax.text.char_vocab import CharVocab
import conformer_fixtures as fx

TOL = 1e-4
LENGTHS = [203, 150, 97, 33]  # real lengths with padding, incl. one that is not a multiple of 8


def _our_logits(path, features, lengths):
    config, variables, meta = conformer.load(path)
    logits, out_len = jax.jit(conformer.ConformerCTC(config).apply)(variables, jnp.asarray(features),
                                                                    jnp.asarray(lengths, jnp.int32))
    return np.asarray(logits), np.asarray(out_len), meta


def _assert_valid_frames_close(ours, ref, out_len):
    assert ours.shape == ref.shape
    worst = 0.0
    for i, n in enumerate(out_len):
        worst = max(worst, float(np.abs(ours[i, :n] - ref[i, :n]).max()))
    assert worst < TOL, f"max abs diff {worst:.2e} on valid frames"
    return worst


@pytest.mark.parametrize("factor,n_layers,scan", [(8, 2, True), (4, 1, False)])
def test_hf_parakeet_logits_match_transformers_with_padding(tmp_path, factor, n_layers, scan):
    model = fx.tiny_parakeet(factor=factor, n_layers=n_layers)
    src = fx.save_hf(model, tmp_path / "hf")
    assert convert.main(["--src", src, "--out", str(tmp_path / "ours")] + ["--scan_layers"] * scan) == 0
    feats = fx.random_features(LENGTHS, 16)
    ref, ref_len = fx.hf_logits(model, feats, LENGTHS)
    ours, out_len, meta = _our_logits(str(tmp_path / "ours"), feats, LENGTHS)
    assert meta["config"]["scan_layers"] == scan  # the 2-block model runs scanned
    np.testing.assert_array_equal(out_len, ref_len)
    worst = _assert_valid_frames_close(ours, ref, out_len)
    print(f"factor {factor}: max abs logit diff {worst:.2e}")
    # Vocabulary (tokenizer.json) and features (preprocessor_config.json) travel with it.
    vocab = CharVocab.from_dict(meta["vocab"])
    assert vocab.tokens == fx.PIECES and vocab.blank_id == 11 == model.config.pad_token_id
    assert meta["features"]["n_mels"] == 16 and meta["features"]["hop_ms"] == 10.0


def test_nemo_archive_gives_same_logits_as_hf(tmp_path):
    model = fx.tiny_parakeet(seed=1)
    nemo = fx.save_nemo(model, tmp_path / "tiny.nemo")
    assert convert.main(["--src", nemo, "--out", str(tmp_path / "ours")]) == 0
    feats = fx.random_features(LENGTHS, 16, seed=3)
    ref, ref_len = fx.hf_logits(model, feats, LENGTHS)
    ours, out_len, meta = _our_logits(str(tmp_path / "ours"), feats, LENGTHS)
    np.testing.assert_array_equal(out_len, ref_len)
    _assert_valid_frames_close(ours, ref, out_len)
    vocab = CharVocab.from_dict(meta["vocab"])
    assert vocab.tokens == fx.CHARS and vocab.kind == "chars"
    assert meta["features"]["win_ms"] == 25.0 and meta["features"]["normalize"] == "per_feature"


def test_nemo_sentencepiece_tokenizer_is_read_from_archive(tmp_path):
    import io
    import tarfile

    import sentencepiece as spm
    text = ["the cat sat on the mat", "a dog ran to the cat", "the dog and the cat"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(tmp_path / "tok"),
                                   vocab_size=20, model_type="unigram", character_coverage=1.0)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    model = fx.tiny_parakeet(vocab_size=sp.get_piece_size() + 1)
    cfg = fx.nemo_model_config(model, labels=[])
    cfg["decoder"]["num_classes"] = sp.get_piece_size()
    cfg["tokenizer"] = {"dir": None, "type": "bpe", "model": "nemo:abc123_tokenizer.model"}
    nemo = fx.save_nemo(model, tmp_path / "bpe.nemo", config=cfg)
    with tarfile.open(nemo, "a:") as tar:
        data = open(tmp_path / "tok.model", "rb").read()
        info = tarfile.TarInfo("./abc123_tokenizer.model")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert convert.main(["--src", nemo, "--out", str(tmp_path / "ours")]) == 0
    _, _, meta = conformer.load(str(tmp_path / "ours"))
    vocab = CharVocab.from_dict(meta["vocab"])
    assert vocab.tokens == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    ids = sp.encode("the cat sat")
    assert vocab.decode(ids) == sp.decode(ids)


def test_checkpoint_with_foreign_or_missing_weights_is_refused_by_name(tmp_path, capsys):
    model = fx.tiny_parakeet(n_layers=1)
    state = fx.nemo_state_dict(model)
    extra = dict(state, **{"encoder.layers.0.self_attn.linear_extra.weight": state["encoder.pre_encode.out.bias"]})
    assert convert.main(["--src", fx.save_nemo(model, tmp_path / "a.nemo", state=extra),
                         "--out", str(tmp_path / "a")]) == 1
    assert "linear_extra" in capsys.readouterr().err
    missing = {k: v for k, v in state.items() if "pos_bias_u" not in k}
    assert convert.main(["--src", fx.save_nemo(model, tmp_path / "b.nemo", state=missing),
                         "--out", str(tmp_path / "b")]) == 1
    assert "encoder.layers.0.self_attn.pos_bias_u" in capsys.readouterr().err
    cfg = fx.nemo_model_config(model)
    cfg["encoder"]["self_attention_model"] = "abs_pos"
    assert convert.main(["--src", fx.save_nemo(model, tmp_path / "c.nemo", config=cfg),
                         "--out", str(tmp_path / "c")]) == 1
    assert "self_attention_model" in capsys.readouterr().err
    (tmp_path / "junk.nemo").write_bytes(b"not a tar")
    assert convert.main(["--src", str(tmp_path / "junk.nemo"), "--out", str(tmp_path / "d")]) == 1
    assert "junk.nemo" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d" / "config.json")


def test_hf_without_tokenizer_needs_vocab_flag(tmp_path, capsys):
    model = fx.tiny_parakeet(n_layers=1)
    src = fx.save_hf(model, tmp_path / "hf")
    os.remove(os.path.join(src, "tokenizer.json"))
    assert convert.main(["--src", src, "--out", str(tmp_path / "o")]) == 1
    assert "--vocab" in capsys.readouterr().err
    fx.write_json(tmp_path / "v.json", fx.CHARS)
    assert convert.main(["--src", src, "--out", str(tmp_path / "o"), "--vocab", str(tmp_path / "v.json")]) == 0
    meta = json.load(open(tmp_path / "o" / "config.json"))
    assert meta["kind"] == "conformer_ctc" and meta["vocab"]["tokens"] == fx.CHARS
