"""A conversation with the speech LLM: the prompt as parts, and token-by-token decoding.

    model = SpeechModel.load("work/mini/align/model")
    dialog = Dialog(model.tokenizer, model.system)
    audio_turn(model, dialog, wave, "translate to french: {content}")   # or dialog.add_user(text=...)
    for token_id in Streamer(model).stream(dialog.parts, max_new_tokens=64): ...
    dialog.add_assistant(reply_text)

The dialog is the Llama-2 chat template with each audio turn's content replaced by its audio
embeddings, exactly as alignment trained (prompting.content_parts gives the cut); its
``parts`` are token-id lists and ``[n, dim]`` embedding arrays. ``Streamer`` decodes one
row with a KV cache: one jitted prefill over the (bucketed) prompt, then one jitted step
per token, each yielded as soon as it is chosen — the chat CLI and the server share it, and
each ``stream`` call owns its cache, so concurrent dialogs never share state.
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.inference.prompting import content_parts
from audiochat_jax.inference.speech_model import SpeechModel
from audiochat_jax.models import long_audio
from audiochat_jax.models.generate import cast_for_inference, sample_token
from audiochat_jax.models.llama import compute_dtype, Llama, init_cache
from audiochat_jax.text.chat_template import encode_dialog

PLACEHOLDER = "x"  # stands for an audio turn's content when the template is tokenised


class Dialog:
    """A growing chat prompt as parts: token ids (list) and audio embeddings ([n, dim])."""

    def __init__(self, tokenizer, system: str | None = None):
        self.tok, self.system = tokenizer, system
        self.messages: list[dict] = []     # audio turns hold PLACEHOLDER
        self.parts: list = []
        self._ids: list[int] = []          # template ids of the dialog so far (placeholders in)

    def _append(self, new_ids: list[int]) -> list[int]:
        if new_ids[:len(self._ids)] != self._ids:
            raise RuntimeError("chat template is not append-only for this dialog")
        delta, self._ids = new_ids[len(self._ids):], new_ids
        return delta

    def _add_tokens(self, ids: list[int]):
        if self.parts and isinstance(self.parts[-1], list):
            self.parts[-1] = self.parts[-1] + ids
        else:
            self.parts.append(list(ids))

    def add_user(self, text: str | None = None, audio: np.ndarray | None = None,
                 instruction: str = "{content}") -> None:
        if audio is None:
            self.messages.append({"role": "user", "content": text})
            self._add_tokens(self._append(encode_dialog(self.tok, self.messages, self.system).ids))
            return
        self.messages.append({"role": "user", "content": instruction.format(content=PLACEHOLDER)})
        turn = len(self.messages) // 2
        prefix, suffix = content_parts(self.tok, self.messages, turn, self.system, instruction)
        full = encode_dialog(self.tok, self.messages, self.system).ids
        self._add_tokens(self._append(prefix))
        self.parts.append(np.asarray(audio))
        self._add_tokens(suffix)
        self._ids = full

    def snapshot(self):
        return list(self.messages), [p if isinstance(p, np.ndarray) else list(p) for p in self.parts], list(self._ids)

    def restore(self, state) -> None:
        self.messages, self.parts, self._ids = state

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self._add_tokens(self._append(encode_dialog(self.tok, self.messages, self.system).ids))


# Module-level jits (config static) so every Streamer of one model shares the compiled code.
@functools.partial(jax.jit, static_argnames="config")
def _embed(params, ids, *, config):
    return Llama(config).apply(params, ids, method=Llama.embed)


@functools.partial(jax.jit, static_argnames="config", donate_argnums=3)
def _prefill(params, x, mask, cache, *, config):
    """Right-padded prompt [1, W, dim] -> (logits after its last real slot [1, vocab], cache)."""
    llama = Llama(config)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    hidden, cache = llama.apply(params, embeddings=x, positions=positions, mask=mask, cache=cache,
                                decode=True, method=Llama.hidden_states)
    last = jnp.sum(mask, axis=1) - 1
    hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    return llama.apply(params, hidden, method=Llama.logits)[:, 0], cache


@functools.partial(jax.jit, static_argnames="config", donate_argnums=3)
def _step(params, tok, pos, cache, *, config):
    """One token [1] at position pos [1] -> (next logits [1, vocab], cache)."""
    logits, cache = Llama(config).apply(params, tok[:, None], positions=pos[:, None],
                                        mask=jnp.ones((1, 1), bool), cache=cache, decode=True)
    return logits[:, 0], cache


class Streamer:
    """Greedy or sampled decoding of one prompt row, yielding each new token id."""

    def __init__(self, model: SpeechModel, bucket: int = 64):
        self.model, self.bucket = model, bucket
        self.cfg = model.llm_config
        self.params = {"params": cast_for_inference(jax.tree_util.tree_map(jnp.asarray, model.llm_params), self.cfg)}
        self._embed = functools.partial(_embed, config=self.cfg)
        self._prefill = functools.partial(_prefill, config=self.cfg)
        self._step = functools.partial(_step, config=self.cfg)

    def embeddings(self, parts) -> np.ndarray:
        """Prompt parts -> [L, dim] embeddings (token parts through the LLM's table)."""
        dtype = compute_dtype(self.cfg.dtype)
        rows = [np.asarray(self._embed(self.params, jnp.asarray([p], jnp.int32)))[0] if isinstance(p, list)
                else np.asarray(jnp.asarray(p, dtype)) for p in parts if len(p)]
        return np.concatenate(rows)

    def stream(self, parts, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[int]:
        x = self.embeddings(parts)
        n = x.shape[0]
        width = -(-n // self.bucket) * self.bucket
        if width + max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(f"the dialog is {n} slots long; with max_new_tokens={max_new_tokens} it exceeds the "
                             f"LLM's max_seq_len {self.cfg.max_seq_len}: /reset to start a new dialog")
        padded = np.zeros((1, width, x.shape[1]), x.dtype)
        padded[0, :n] = x
        mask = np.zeros((1, width), bool)
        mask[0, :n] = True
        cache = init_cache(self.cfg, 1, width + max_new_tokens)
        logits, cache = self._prefill(self.params, jnp.asarray(padded), jnp.asarray(mask), cache)
        rng = jax.random.key(seed)
        eos = self.model.tokenizer.eos_id
        for i in range(max_new_tokens):
            rng, sub = jax.random.split(rng)
            tok = sample_token(logits, sub, temperature, top_p)
            t = int(tok[0])
            if t == eos:
                return
            yield t
            logits, cache = self._step(self.params, tok, jnp.array([n + i], jnp.int32), cache)


def audio_turn(model: SpeechModel, dialog: Dialog, wave: np.ndarray, instruction: str = "{content}", *,
               name: str = "audio", reserve: int = 0) -> None:
    """Embeds ``wave`` (windowed if long) and adds it as a user turn. Raises ValueError naming
    the fix (``--extra_stride``, shorter audio) when its embeddings plus the turn's template
    tokens and ``reserve`` reply slots cannot fit the LLM's context even in a new dialog."""
    sr = model.features.sample_rate
    count = model.audio_embedding_count(len(wave))
    template = encode_dialog(dialog.tok, [{"role": "user", "content": instruction.format(content="")}],
                             dialog.system).ids
    long_audio.check_context(count, model.llm_config.max_seq_len, len(template) + reserve,
                             extra_stride=model.extra_stride if model.is_long(len(wave)) else 1,
                             seconds=len(wave) / sr, where=name)
    emb, n = model.embed_audio([wave])
    dialog.add_user(audio=emb[0, :n[0]], instruction=instruction)
