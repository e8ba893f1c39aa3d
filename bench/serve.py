"""The server end to end: first-token latency and streamed tokens/s of the OpenAI-compatible
API (audiochat_jax/serving) on an aligned model, audio and text requests, one at a time.

    python bench/serve.py --ckpt work/mini/align/model            # the mini world's model

Starts the server in this process on 127.0.0.1 (a free port), sends ``--requests`` streaming
requests of each kind (a spoken question synthesised with espeak-ng; a typed question),
``max_tokens=--max_tokens`` with EOS ignored so every reply has the same length, and prints
the median time to the first streamed token and the streamed tokens/s after it. There is no
peer: these are the numbers a user of ``python -m audiochat_jax.serve`` sees.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import protocol  # noqa: E402


class _NoEos:
    """The tokenizer, but no token is EOS: every reply runs to max_tokens."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_id = -1

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _server(engine):
    import uvicorn
    from audiochat_jax.serving.app import create_app
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def stream_once(url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first content token, seconds for the rest, streamed pieces)."""
    import httpx
    t0, first, n = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                n += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, end - first, n


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a speech_llm model directory (the align stage's export)")
    p.add_argument("--requests", type=int, default=5)
    p.add_argument("--max_tokens", type=int, default=32)
    args = p.parse_args(argv)
    import soundfile as sf
    from audiochat_jax.audio.espeak import synthesize
    from audiochat_jax.inference.speech_model import SpeechModel
    from audiochat_jax.serving.app import Engine, warm_up
    from audiochat_jax.serving.openai_api import Limits
    before = protocol.load()
    print(protocol.machine_line())
    model = SpeechModel.load(args.ckpt, batch_rows=1)
    model = dataclasses.replace(model, tokenizer=_NoEos(model.tokenizer))  # fixed-length replies
    engine = Engine(model, Limits(max_tokens=args.max_tokens), "bench")
    warm_up(engine)
    server, url = _server(engine)
    buf = io.BytesIO()
    sf.write(buf, synthesize("what is seven plus twelve", "en-us+m3"), 16000, format="WAV", subtype="PCM_16")
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    kinds = {"audio": [{"role": "user", "content": [audio]}],
             "text": [{"role": "user", "content": "what is seven plus twelve"}]}
    out = {}
    for kind, messages in kinds.items():
        body = {"model": "bench", "messages": messages, "max_tokens": args.max_tokens}
        stream_once(url, body)  # compiles this prompt width
        runs = [stream_once(url, body) for _ in range(args.requests)]
        ttft = statistics.median(r[0] for r in runs)
        rate = statistics.median((r[2] - 1) / r[1] for r in runs if r[1] > 0)
        out[kind] = {"first_token_s": ttft, "tokens_per_s": rate}
        print(f"{kind:6s} request: first token {ttft * 1e3:7.1f} ms, then {rate:7.1f} tokens/s "
              f"(median of {args.requests}, {args.max_tokens} tokens each)")
    server.should_exit = True
    print(protocol.load_line(before))
    return out


if __name__ == "__main__":
    main()
