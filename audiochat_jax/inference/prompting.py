"""Chat prompts with text or audio content: build, score (response NLL) and answer (greedy).

Every evaluation path goes through the same code: a prompt row is a list of *parts*, each
either token ids (``list[int]``) or audio embeddings (``np.ndarray [n, dim]``); rows of a
batch share their structure (part k is tokens in every row, or audio in every row). Parts
are padded per batch, embedded (token parts through the frozen LLM's embedding table) and
packed left-aligned by ``models.speech_llm.splice`` — exactly what alignment trained on — so
the text path (gold transcript tokens), the cascade (ASR transcript tokens) and the
end-to-end path (audio embeddings) differ only in the content part.

    p = Prompter(model, batch_size=16, max_new_tokens=48)
    nll, n = p.score(rows, responses)          # per row: summed NLL [n], response tokens [n]
    replies = p.generate(rows)                 # per row: new ids, EOS stripped

Shapes are bucketed (rows padded to ``batch_size``, widths to multiples of ``width_multiple``)
so the jitted functions compile once per bucket.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import speech_llm
from audiochat_jax.models.generate import generate
from audiochat_jax.text.chat_template import audio_prompt_parts, encode_dialog

Part = Union[list, np.ndarray]


def content_parts(tokenizer, messages: Sequence[dict], turn: int, system: str | None = None,
                  instruction: str = "{content}") -> tuple[list[int], list[int]]:
    """Token ids before and after the content of user turn ``turn`` (counted among user
    turns) of a Llama-2 chat dialog, the content being ``instruction.format(content=...)``.

    Generalises ``chat_template.audio_prompt_parts`` (last turn only) to an audio turn
    followed by more of the dialog (e.g. a typed follow-up): ``prefix + encode(content) +
    suffix == encode_dialog(messages with that content).ids``, checked with two placeholders.
    """
    messages = list(messages)
    idx = 2 * turn
    if idx >= len(messages) or messages[idx]["role"] != "user":
        raise ValueError(f"content_parts: turn {turn} is not a user turn of a {len(messages)}-message dialog")
    prefix, _ = audio_prompt_parts(tokenizer, system, history=messages[:idx], instruction=instruction)
    suffixes = []
    for ph in ("x", "hello world"):
        msgs = messages[:idx] + [{"role": "user", "content": instruction.format(content=ph)}] + messages[idx + 1:]
        ids = encode_dialog(tokenizer, msgs, system).ids
        head = prefix + tokenizer.encode(ph)
        if ids[:len(head)] != head:
            raise ValueError(f"content_parts: the dialog's tokens around turn {turn} depend on its "
                             f"content (instruction {instruction!r}); put whitespace around '{{content}}'")
        suffixes.append(ids[len(head):])
    if suffixes[0] != suffixes[1]:
        raise ValueError(f"content_parts: the tokens after turn {turn} depend on its content")
    return prefix, suffixes[0]


def response_ids(tokenizer, messages: Sequence[dict], reply: str, system: str | None = None) -> list[int]:
    """The tokens the chat LLM is trained to produce for ``reply`` after ``messages``
    (the reply, the template's trailing piece and ``</s>``): ``encode_dialog``'s last
    assistant span."""
    dt = encode_dialog(tokenizer, list(messages) + [{"role": "assistant", "content": reply}], system)
    s, e = dt.assistant_spans[-1]
    return dt.ids[s:e]


def _round(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m) * m))


def _splice_impl(params, segs, *, config, kinds):
    out = []
    for (x, n), kind in zip(segs, kinds):
        out.append((speech_llm.embed_tokens(config, params, x) if kind == "tokens" else x, n))
    return speech_llm.splice(out)


_splice = jax.jit(_splice_impl, static_argnames=("config", "kinds"))


@functools.partial(jax.jit, static_argnames=("config", "kinds"))
def _score(params, segs, targets, target_lengths, *, config, kinds):
    """Summed NLL of each row's response (the last segment) and its token count."""
    prompt = _splice_impl(params, segs, config=config, kinds=kinds)
    logits = speech_llm.response_logits(config, params, prompt, targets.shape[1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(targets.shape[1])[None, :] < target_lengths[:, None]
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=1), valid.sum(axis=1)


class Prompter:
    """Scores and answers prompt rows with a ``SpeechModel``'s frozen LLM (single device)."""

    def __init__(self, model, batch_size: int = 16, max_new_tokens: int = 48, width_multiple: int = 16):
        self.model, self.batch_size = model, batch_size
        self.max_new_tokens, self.width_multiple = max_new_tokens, width_multiple
        self.params = jax.tree_util.tree_map(jnp.asarray, model.llm_params)

    def _segments(self, rows: Sequence[Sequence[Part]]):
        kinds = tuple("tokens" if isinstance(p, (list, tuple)) else "audio" for p in rows[0])
        segs = []
        for k, kind in enumerate(kinds):
            parts = [r[k] for r in rows]
            if any(("tokens" if isinstance(p, (list, tuple)) else "audio") != kind for p in parts):
                raise ValueError(f"Prompter: part {k} mixes token ids and audio across rows of one batch")
            lengths = np.zeros((self.batch_size,), np.int32)
            lengths[:len(parts)] = [len(p) for p in parts]
            width = _round(int(lengths.max()), self.width_multiple)
            if kind == "tokens":
                x = np.full((self.batch_size, width), self.model.tokenizer.pad_id, np.int32)
                for i, p in enumerate(parts):
                    x[i, :len(p)] = p
            else:
                x = np.zeros((self.batch_size, width, parts[0].shape[-1]), parts[0].dtype)
                for i, p in enumerate(parts):
                    x[i, :len(p)] = p
            segs.append((jnp.asarray(x), jnp.asarray(lengths)))
        return tuple(segs), kinds

    def _chunks(self, n: int):
        return [(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]

    def score(self, rows: Sequence[Sequence[Part]], responses: Sequence[Sequence[int]]
              ) -> tuple[np.ndarray, np.ndarray]:
        """-> (summed NLL [n] float64, response tokens [n] int) of ``responses`` after ``rows``."""
        nll, count = [], []
        for s, e in self._chunks(len(rows)):
            segs, kinds = self._segments(rows[s:e])
            resp = responses[s:e]
            lengths = np.zeros((self.batch_size,), np.int32)
            lengths[:len(resp)] = [len(r) for r in resp]
            targets = np.zeros((self.batch_size, _round(int(lengths.max()), self.width_multiple)), np.int32)
            for i, r in enumerate(resp):
                targets[i, :len(r)] = r
            # The response is the last segment: its embeddings are the teacher-forced inputs.
            segs = segs + ((jnp.asarray(targets), jnp.asarray(lengths)),)
            a, b = _score(self.params, segs, jnp.asarray(targets), jnp.asarray(lengths),
                          config=self.model.llm_config, kinds=kinds + ("tokens",))
            nll.append(np.asarray(a, np.float64)[:e - s])
            count.append(np.asarray(b)[:e - s])
        return np.concatenate(nll), np.concatenate(count)

    def generate(self, rows: Sequence[Sequence[Part]]) -> list[list[int]]:
        """Greedy answers: per row the new token ids, without the EOS."""
        out = []
        cfg, tok = self.model.llm_config, self.model.tokenizer
        for s, e in self._chunks(len(rows)):
            segs, kinds = self._segments(rows[s:e])
            prompt = _splice(self.params, segs, config=cfg, kinds=kinds)
            # Rows are left-aligned: slots past the longest row are padding everywhere.
            width = min(_round(int(prompt.lengths.max()), self.width_multiple), prompt.mask.shape[1])
            if width + self.max_new_tokens > cfg.max_seq_len:
                raise ValueError(f"prompt of {int(prompt.lengths.max())} slots + max_new_tokens "
                                 f"{self.max_new_tokens} exceeds the LLM's max_seq_len {cfg.max_seq_len}")
            mask = np.asarray(prompt.mask[:, :width]).copy()
            mask[e - s:, 0] = True   # filler rows need one real slot; their output is discarded
            new, lengths = generate(cfg, self.params, embeddings=prompt.embeddings[:, :width],
                                    mask=jnp.asarray(mask), max_new_tokens=self.max_new_tokens,
                                    eos_id=tok.eos_id, pad_id=tok.pad_id)
            new, lengths = np.asarray(new), np.asarray(lengths)
            for i in range(e - s):
                ids = new[i, :lengths[i]].tolist()
                out.append(ids[:-1] if ids and ids[-1] == tok.eos_id else ids)
        return out

    def decode(self, ids_list: Sequence[Sequence[int]]) -> list[str]:
        return [self.model.tokenizer.decode(ids).strip() for ids in ids_list]
