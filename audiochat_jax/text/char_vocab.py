"""CTC output vocabularies: characters, or the pieces of a sentencepiece model.

The blank is the LAST class (``blank_id == size - 1``), NeMo's and HF Parakeet's
convention, so converted checkpoints and models trained here share one layout.

A vocabulary of characters encodes text symbol by symbol (" " is a symbol). A vocabulary
of pieces (sentencepiece / NeMo BPE models) only decodes here: pieces are concatenated and
the word marker "▁" becomes a space; to encode targets use the sentencepiece model itself
(text/tokenizer.py) — its ids are the same.

``error_rates`` scores transcripts with jiwer (WER and CER).
"""
from __future__ import annotations

import json
from typing import Iterable, Sequence

import jiwer

WORD_MARKER = "▁"  # sentencepiece's word-start marker
ENGLISH_CHARS = " abcdefghijklmnopqrstuvwxyz'"  # NeMo's English character labels


class CharVocab:
    """CTC targets <-> text. ``tokens`` are the non-blank classes, in id order."""

    def __init__(self, tokens: Sequence[str], kind: str = "chars"):
        if kind not in ("chars", "pieces"):
            raise ValueError(f"CharVocab kind={kind!r}: use 'chars' or 'pieces'")
        tokens = list(tokens)
        if not tokens:
            raise ValueError("CharVocab: empty token list")
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"CharVocab: duplicate tokens {dup}")
        if kind == "chars" and any(len(t) != 1 for t in tokens):
            bad = [t for t in tokens if len(t) != 1][:5]
            raise ValueError(f"CharVocab(kind='chars'): tokens must be single characters, got {bad}; "
                             f"use kind='pieces' for multi-character units")
        self.tokens = tokens
        self.kind = kind
        self._index = {t: i for i, t in enumerate(tokens)}

    # -- sizes --------------------------------------------------------------------------
    @property
    def blank_id(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        """Number of CTC classes, blank included (= the model's ``vocab_size``)."""
        return len(self.tokens) + 1

    def __len__(self) -> int:
        return self.size

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def english(cls) -> "CharVocab":
        return cls(list(ENGLISH_CHARS))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharVocab":
        """All characters seen in ``texts``, sorted (deterministic ids)."""
        return cls(sorted(set("".join(texts))))

    @classmethod
    def from_sentencepiece(cls, model_path: str) -> "CharVocab":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=model_path)
        return cls([sp.id_to_piece(i) for i in range(sp.get_piece_size())], kind="pieces")

    @classmethod
    def from_dict(cls, d: dict) -> "CharVocab":
        try:
            return cls(d["tokens"], kind=d.get("kind", "chars"))
        except KeyError:
            raise ValueError(f"CharVocab.from_dict: expected {{'tokens': [...], 'kind': ...}}, got keys "
                             f"{sorted(d)}") from None

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "kind": self.kind, "blank_id": self.blank_id}

    @classmethod
    def load(cls, path: str) -> "CharVocab":
        """From a sentencepiece ``.model`` or a JSON file (a token list or ``to_dict()``)."""
        if path.endswith(".model"):
            return cls.from_sentencepiece(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(data) if isinstance(data, list) else cls.from_dict(data)

    # -- text <-> ids -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.kind != "chars":
            raise ValueError("CharVocab(kind='pieces').encode: encode with the sentencepiece model "
                             "(text/tokenizer.py); its ids are this vocabulary's ids")
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharVocab.encode: character {e.args[0]!r} in {text!r} is not in the "
                             f"vocabulary {''.join(self.tokens)!r}; normalise the transcript or build "
                             f"the vocabulary with CharVocab.from_texts over the training text") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (already CTC-collapsed) -> text; blanks and out-of-range ids are skipped."""
        out = "".join(self.tokens[i] for i in ids if 0 <= i < len(self.tokens))
        if self.kind == "pieces":
            out = out.replace(WORD_MARKER, " ").strip()
        return out


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level ``{"wer": ..., "cer": ...}`` with jiwer (errors / reference length)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"error_rates: {len(references)} references vs {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("error_rates: no transcripts to score")
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}
