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
embeddings, exactly as alignment trained (inference/prompting.content_parts gives the cut).
"""
from __future__ import annotations

import argparse
import os
import sys

from audiochat_jax.audio.io import DEFAULT_MAX_SECONDS, AudioError, load_audio
from audiochat_jax.inference.dialog import Dialog, Streamer, audio_turn
from audiochat_jax.inference.speech_model import SpeechModel

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")


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
