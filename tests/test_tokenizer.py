"""Tokenizer: Llama-2 special ids, pad choice, training that keeps rare letters, offsets."""
import random

import numpy as np
import pytest
import sentencepiece as spm

from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece

WORDS = ("the cat sat on a mat alice bob carol paris lyon seven twelve plus minus what is "
         "colour of car red blue green le chat rouge bleu vert est").split()


def _corpus(n=1500, seed=0):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + rng.choice("?.!")
             for _ in range(n)]
    lines.append("quentin")  # one rare letter 'q', seen once
    lines.append("élève très café")  # accents, as in the French side of the mini world
    return lines


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = train_sentencepiece(_corpus(), tmp_path_factory.mktemp("spm") / "m", vocab_size=360)
    return Tokenizer(path)


def test_special_ids_follow_llama_layout(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 360
    assert tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"


def test_missing_pad_piece_borrows_unk(tok):
    # Llama-2's tokenizer.model has pad_id() == -1; we document pad = unk.
    assert tok._sp.pad_id() == -1
    assert tok.pad_id == tok.unk_id == 0
    assert tok.pad_id != tok.eos_id


def test_model_with_pad_piece_keeps_it(tmp_path):
    path = train_sentencepiece(_corpus(300), tmp_path / "p", vocab_size=330, pad_id=3)
    t = Tokenizer(path)
    assert t.pad_id == 3 and t.unk_id == 0


def test_encode_equals_sentencepiece_and_wraps_bos_eos(tok):
    sp = spm.SentencePieceProcessor(model_file=tok.model_path)
    for text in ["what is the colour of the car of alice?", " two  spaces ", "le chat est bleu"]:
        assert tok.encode(text) == sp.encode(text)
        assert tok.encode(text, bos=True, eos=True) == [1] + sp.encode(text) + [2]
    # identity normalisation, no whitespace collapsing: the text survives exactly
    assert tok.decode(tok.encode(" two  spaces ")) == " two  spaces "


def test_rare_letters_round_trip_where_default_coverage_loses_them(tok, tmp_path):
    text = "quentin et l'élève"
    ids = tok.encode(text)
    assert tok.unk_id not in ids and tok.decode(ids) == text
    # The same corpus with sentencepiece's defaults (coverage 0.9995, no byte fallback)
    # maps the rare letter to <unk>: the failure our defaults exist to prevent.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), vocab_size=60,
                                   model_prefix=str(tmp_path / "d"), minloglevel=2)
    default = spm.SentencePieceProcessor(model_file=str(tmp_path / "d.model"))
    assert 0 in default.encode(text)


def test_offsets_cover_pieces_including_multibyte_and_newlines(tok):
    text = "[INST] <<SYS>>\nsoyez bref\n<</SYS>>\n\nl'élève est très café? [/INST] oui "
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert len(offsets) == len(ids)
    # Concatenating the ranges reproduces the text: contiguous, in order, nothing lost.
    assert "".join(text[b:e] for b, e in offsets) == text
    for (b, e), i in zip(offsets, ids):
        piece = tok.id_to_piece(i)
        if not piece.startswith("<0x") and piece != "▁":
            assert text[b:e] == piece.replace("▁", " "), (piece, text[b:e])


def test_decode_accepts_numpy_ids(tok):
    ids = np.asarray(tok.encode("alice sat on a mat", bos=True, eos=True), np.int32)
    assert tok.decode(ids) == "alice sat on a mat"


def test_bad_model_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model.*train_sentencepiece"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json.*not a sentencepiece model"):
        Tokenizer(bad)
    with pytest.raises(ValueError, match="no non-empty sentences"):
        train_sentencepiece(["", "  "], tmp_path / "e", vocab_size=300)
