"""``python -m audiochat_jax.chat --ckpt work/mini/align/model``: talk to the speech LLM.

Interactive, multi-turn: each line you type is one user turn —

* text: ``what is seven plus twelve``
* audio: a path to an audio file (WAV/FLAC, any rate, mono or stereo): ``question.wav``;
  words before the path are a typed instruction around it: ``translate to french: clip.wav``.

The reply streams token by token (a step-wise KV-cache decode: one prefill, then one jitted
step per token, each token printed as soon as it is chosen). ``/reset`` starts a new dialog,
``/quit`` (or end of input) leaves. A bad audio file (missing, not audio, empty, NaN, too
long...) prints an error naming the file and the fix; the session goes on without that turn.
``--audio FILE`` answers one audio file and exits (status 1 if it cannot be read).

Long recordings: audio longer than ``--chunk_seconds`` (default 30) is encoded in overlapping
windows (models/long_audio.py), so memory depends on the window, not the length; ``--extra_stride``
mean-pools its embeddings so that minutes of audio fit the LLM's context. Audio whose embeddings
cannot fit even a new dialog is refused with the stride that would fit.

The dialog is the Llama-2 chat template with each audio turn's content replaced by its audio
embeddings, exactly as alignment trained (eval/prompting.content_parts gives the cut).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.audio.io import DEFAULT_MAX_SECONDS, AudioError, load_audio
from audiochat_jax.eval.prompting import content_parts
from audiochat_jax.eval.speech_model import SpeechModel
from audiochat_jax.models import long_audio
from audiochat_jax.models.generate import cast_for_inference, sample_token
from audiochat_jax.models.llama import DTYPES, Llama, init_cache
from audiochat_jax.text.chat_template import encode_dialog

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")
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
        dtype = DTYPES[self.cfg.dtype]
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


def parse_turn(line: str) -> tuple[str, str | None, str]:
    """A typed line -> (kind "text"|"audio", audio path or None, instruction or text).

    The line is audio when its last word is an existing file or ends with an audio extension;
    the words before it become the instruction (``"translate to french: a.wav"``)."""
    words = line.strip().rsplit(None, 1)
    last = words[-1] if words else ""
    if last and (last.lower().endswith(AUDIO_EXTENSIONS) or os.path.isfile(last)):
        before = words[0] if len(words) == 2 else ""
        return "audio", last, (before + " {content}") if before else "{content}"
    return "text", None, line.strip()


def reply(model: SpeechModel, streamer: Streamer, dialog: Dialog, args, out=None) -> str:
    out = out or sys.stdout
    ids, printed = [], ""
    for t in streamer.stream(dialog.parts, args.max_new_tokens, args.temperature, args.top_p, args.seed):
        ids.append(t)
        text = model.tokenizer.decode(ids)
        out.write(text[len(printed):])
        out.flush()
        printed = text
    out.write("\n")
    out.flush()
    dialog.add_assistant(printed.strip())
    return printed.strip()


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


def user_turn(model: SpeechModel, dialog: Dialog, line: str, *, max_seconds: float = DEFAULT_MAX_SECONDS,
              reserve: int = 0) -> None:
    """Adds one typed line as a user turn; raises AudioError for an unreadable audio file."""
    kind, path, rest = parse_turn(line)
    if kind == "text":
        dialog.add_user(text=rest)
        return
    if not model.has_audio:
        raise ValueError(f"{path}: this model has no audio encoder (a text-only LLM directory); "
                         "pass --ckpt a speech_llm directory")
    wave = load_audio(path, model.features.sample_rate, max_seconds=max_seconds)
    audio_turn(model, dialog, wave, rest, name=path, reserve=reserve)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiochat_jax.chat", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--ckpt", required=True, help="speech_llm model directory (the align stage's export)")
    parser.add_argument("--llm_dir", default="", help="frozen LLM directory (default: the one recorded in --ckpt)")
    parser.add_argument("--tokenizer", default="", help="sentencepiece .model (default: recorded in --ckpt)")
    parser.add_argument("--audio", help="answer this audio file and exit")
    parser.add_argument("--instruction", default="{content}",
                        help="text around --audio, e.g. 'translate to french: {content}'")
    parser.add_argument("--system", default=None, help="system prompt (default: the one the model was aligned with)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk_seconds", type=float, default=30.0,
                        help="audio longer than this is encoded in overlapping windows of this length")
    parser.add_argument("--overlap_seconds", type=float, default=4.0, help="overlap of those windows")
    parser.add_argument("--extra_stride", type=int, default=1,
                        help="mean-pool a long recording's embeddings by this factor (fits more audio in the context)")
    parser.add_argument("--max_audio_seconds", type=float, default=3600.0, help="refuse longer audio files")
    args = parser.parse_args(argv)
    if args.extra_stride < 1 or args.chunk_seconds <= args.overlap_seconds:
        parser.error("need --extra_stride >= 1 and --chunk_seconds > --overlap_seconds")
    try:
        model = SpeechModel.load(args.ckpt, args.llm_dir, args.tokenizer, batch_rows=1,
                                 chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                                 extra_stride=args.extra_stride)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    system = args.system if args.system is not None else model.system
    streamer = Streamer(model)
    dialog = Dialog(model.tokenizer, system)
    if args.audio:
        try:
            wave = load_audio(args.audio, model.features.sample_rate, max_seconds=args.max_audio_seconds)
            audio_turn(model, dialog, wave, args.instruction, name=args.audio, reserve=args.max_new_tokens)
        except (AudioError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        reply(model, streamer, dialog, args)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message or an audio file path (/reset, /quit).", flush=True)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            dialog = Dialog(model.tokenizer, system)
            print("(new dialog)", flush=True)
            continue
        state = dialog.snapshot()
        try:
            user_turn(model, dialog, line, max_seconds=args.max_audio_seconds, reserve=args.max_new_tokens)
            print("assistant> ", end="", flush=True)
            reply(model, streamer, dialog, args)
        except (AudioError, ValueError) as e:  # bad audio, or the dialog outgrew the context
            print(f"\nerror: {e}", file=sys.stderr, flush=True)
            dialog.restore(state)


if __name__ == "__main__":
    sys.exit(main())
