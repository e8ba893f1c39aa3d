"""SentencePiece tokenizer with Llama-2's conventions, and training one for the mini world.

Llama-2's ``tokenizer.model`` is a sentencepiece BPE model with ``unk=0, bos=1, eos=2`` and
**no pad piece** (``pad_id() == -1``). Batches still need a pad id, so :class:`Tokenizer`
uses a documented choice:

    pad_id = the model's own pad piece if it has one, else unk_id (0 for Llama-2).

Padding positions are always masked (attention mask / loss mask / ``lengths``), so the value
is never read by the model; borrowing ``unk`` (not ``eos``) keeps "stop at EOS" logic from
ever mistaking padding for the end of a reply, and 0 is also ``generate``'s default pad.

:func:`train_sentencepiece` trains a model with the same layout and settings as Llama-2's
(BPE, byte fallback, identity normalisation, no whitespace collapsing, digits split) so the
mini world exercises exactly the code paths of the real 7B tokenizer.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import sentencepiece as spm
# SentencePieceText (pieces with byte offsets). Not sentencepiece_model_pb2: that module of
# sentencepiece 0.2.3 needs protobuf >= 7 and fails to import next to tensorflow's protobuf 6.
from sentencepiece import sentencepiece_pb2

# Llama-2's tokenizer.model trainer spec (the fields that change how text is split).
LLAMA2_TRAINER_DEFAULTS = dict(
    model_type="bpe",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    # Every character in the corpus gets a piece; anything else falls back to bytes. The
    # default coverage (0.9995) silently mapped rare letters to <unk> in a small corpus.
    character_coverage=1.0,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    minloglevel=2,
)


class Tokenizer:
    """A sentencepiece model with Llama's special ids.

    Args:
      model_path: a sentencepiece ``.model`` file (e.g. Llama-2's ``tokenizer.model``).
    """

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(
                f"Tokenizer model {self.model_path!r} does not exist. Pass the sentencepiece "
                "'tokenizer.model' shipped with the Llama weights, or train one with "
                "audiochat_jax.text.tokenizer.train_sentencepiece.")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_file=self.model_path)
        except (OSError, RuntimeError) as e:
            raise ValueError(
                f"{self.model_path!r} is not a sentencepiece model ({e}). Expected a "
                "'tokenizer.model' file (binary protobuf), not tokenizer.json.") from e
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise ValueError(
                f"Tokenizer model {self.model_path!r} has no BOS/EOS pieces "
                f"(bos_id={self._sp.bos_id()}, eos_id={self._sp.eos_id()}); the Llama-2 chat "
                "template needs both. Retrain with bos_id/eos_id set (train_sentencepiece does).")

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def pad_id(self) -> int:
        """The model's pad piece, else ``unk_id`` (see the module docstring for why)."""
        pad = self._sp.pad_id()
        return pad if pad >= 0 else self.unk_id

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """``text`` -> token ids, optionally wrapped in BOS/EOS (sentencepiece adds the
        leading "▁" word marker, as Meta's ``Tokenizer.encode`` does)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}.")
        ids = self._sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Like ``encode(text)``, plus each token's ``[start, end)`` character range in
        ``text`` (the "▁" of a word covers the space before it; the dummy-prefix "▁" and
        continuation bytes of a multi-byte character are empty ranges)."""
        proto = sentencepiece_pb2.SentencePieceText()
        proto.ParseFromString(self._sp.encode(text, out_type="serialized_proto"))
        # sentencepiece reports UTF-8 byte offsets; map them to str indices.
        byte_to_char = [0] * (len(text.encode("utf-8")) + 1)
        pos = 0
        for i, ch in enumerate(text):
            n = len(ch.encode("utf-8"))
            for k in range(n):
                byte_to_char[pos + k] = i
            pos += n
        byte_to_char[pos] = len(text)
        ids = [p.id for p in proto.pieces]
        offsets = [(byte_to_char[p.begin], byte_to_char[p.end]) for p in proto.pieces]
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text. BOS/EOS are dropped by sentencepiece; trim padding first
        (``generate`` returns lengths for that)."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return (f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})")


def train_sentencepiece(sentences: Iterable[str], out_prefix: str | os.PathLike,
                        vocab_size: int, **kw) -> str:
    """Trains a Llama-2-style sentencepiece model and returns the ``.model`` path.

    Args:
      sentences: training text; a string containing newlines counts as several lines
        (sentencepiece reads line by line; newlines themselves become byte pieces).
      out_prefix: writes ``{out_prefix}.model`` and ``{out_prefix}.vocab``.
      vocab_size: exact size including the 3 special pieces and, with byte fallback, the
        256 byte pieces.
      **kw: any sentencepiece trainer option, overriding ``LLAMA2_TRAINER_DEFAULTS``.
    """
    lines = [line for s in sentences for line in s.split("\n") if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece got no non-empty sentences to train on.")
    out_prefix = os.fspath(out_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    options = {**LLAMA2_TRAINER_DEFAULTS, **kw}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=out_prefix,
                                   vocab_size=vocab_size, **options)
    return out_prefix + ".model"
