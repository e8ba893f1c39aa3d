"""``python -m audiochat_jax.serve --ckpt work/mini/align/model``: an OpenAI-compatible audio
chat server and a web demo for an aligned speech LLM.

Open http://127.0.0.1:8000/ for the demo (record or upload audio, type text, multi-turn,
replies stream in), or call the API with any OpenAI client::

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
      "model": "mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "translate to french:"},
        {"type": "input_audio", "input_audio": {"data": "'$(base64 -w0 q.wav)'", "format": "wav"}}]}]}'

``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``seed`` and ``stream`` work as in the
OpenAI API; ``"audio_transcripts": true`` also returns what the encoder's CTC head heard in
the last user message's audio (a list: empty when it holds none).
Bad requests get an OpenAI-style JSON error naming the field (audiochat_jax/serving/
openai_api.py); the server goes on serving. Needs the ``serve`` extra
(``pip install -e '.[serve]'``).
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m audiochat_jax.serve", description=doc[0].split(": ", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(doc[1:]))
    parser.add_argument("--ckpt", required=True, help="speech_llm model directory (the align stage's export), "
                        "or a llama directory for text only")
    parser.add_argument("--llm_dir", default="", help="frozen LLM directory (default: the one recorded in --ckpt)")
    parser.add_argument("--tokenizer", default="", help="sentencepiece .model (default: recorded in --ckpt)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model_name", default="", help="the id clients send as `model` (default: the "
                        "checkpoint's directory name, e.g. 'model' -> its parent's)")
    parser.add_argument("--max_audio_seconds", type=float, default=30.0, help="refuse longer audio parts")
    parser.add_argument("--max_request_mb", type=float, default=16.0, help="refuse larger request bodies")
    parser.add_argument("--max_tokens", type=int, default=512, help="the most a request may ask for")
    parser.add_argument("--default_max_tokens", type=int, default=128, help="when a request sets no max_tokens")
    parser.add_argument("--no_warmup", action="store_true", help="do not compile the decode path before serving")
    args = parser.parse_args(argv)
    try:
        import uvicorn
        from audiochat_jax.serving.app import Engine, create_app, warm_up
    except ImportError as e:
        print(f"error: {e.name} is missing; install the server's dependencies: pip install -e '.[serve]'",
              file=sys.stderr)
        return 2
    from audiochat_jax.models import model_dir
    from audiochat_jax.inference.speech_model import SpeechModel
    from audiochat_jax.serving.openai_api import Limits
    if args.max_tokens < 1 or not 1 <= args.default_max_tokens <= args.max_tokens:
        parser.error("need 1 <= --default_max_tokens <= --max_tokens")
    try:
        kind = model_dir.read_model_config(args.ckpt).get("kind")
        model = (SpeechModel.text_only(args.ckpt, args.tokenizer, batch_rows=1) if kind == "llama"
                 else SpeechModel.load(args.ckpt, args.llm_dir, args.tokenizer, batch_rows=1))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = os.path.abspath(args.ckpt)
    name = args.model_name or os.path.basename(os.path.dirname(path) if os.path.basename(path) == "model" else path)
    limits = Limits(max_audio_seconds=args.max_audio_seconds, max_request_bytes=int(args.max_request_mb * 2 ** 20),
                    max_tokens=args.max_tokens, default_max_tokens=args.default_max_tokens)
    engine = Engine(model, limits, name)
    if not args.no_warmup:
        print(f"compiling the decode path ({name}) ...", flush=True)
        print(f"ready in {warm_up(engine):.1f} s", flush=True)
    print(f"serving {name} on http://{args.host}:{args.port}/ (API: /v1/chat/completions)", flush=True)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
