"""The HTTP server: an OpenAI-compatible chat-completions API over one loaded speech LLM,
and the web demo page.

    app = create_app(Engine(SpeechModel.load(ckpt), Limits(), "mini"))   # uvicorn.run(app, ...)

Routes: ``POST /v1/chat/completions`` (openai_api.py: text and ``input_audio`` parts,
``stream: true`` as server-sent events), ``GET /v1/models``, ``GET /health``, ``GET /`` (the
demo page, static/index.html).

Concurrency: the model is used by one request at a time (``Engine.lock``): on a CPU one
decode already uses every core, and each request builds its own dialog and KV cache
(inference/dialog.py), so nothing is shared between requests but the weights. The model
work runs in worker threads, never in the event loop, so ``/health`` and new requests are
answered while a long reply streams; waiting requests queue on the lock (``/health`` shows
how many). A client that disconnects mid-stream stops its decode at the next token.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from typing import Iterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from audiochat_jax.inference.dialog import Dialog, Streamer, audio_turn
from audiochat_jax.inference.speech_model import SpeechModel
from audiochat_jax.serving import openai_api
from audiochat_jax.serving.openai_api import ApiError, ChatRequest, Limits

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class Engine:
    """One loaded model, its decoder and the lock that serialises their use."""

    def __init__(self, model: SpeechModel, limits: Limits, model_id: str):
        self.model, self.limits, self.model_id = model, limits, model_id
        self.streamer = Streamer(model)
        self.lock = threading.Lock()
        self.created = int(time.time())
        self._waiting = 0
        self._count_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return self._waiting

    def _locked(self):
        engine = self

        class _Ctx:
            def __enter__(self):
                with engine._count_lock:
                    engine._waiting += 1
                engine.lock.acquire()
                with engine._count_lock:
                    engine._waiting -= 1

            def __exit__(self, *exc):
                engine.lock.release()
        return _Ctx()

    def parse(self, body) -> ChatRequest:
        sr = self.model.features.sample_rate if self.model.has_audio else 16000
        return openai_api.parse_request(body, model_id=self.model_id, limits=self.limits, sample_rate=sr,
                                        has_audio=self.model.has_audio)

    def prepare(self, req: ChatRequest) -> tuple[Dialog, list[str] | None]:
        """The request's dialog (audio embedded) and, when asked, the CTC transcripts of its audio."""
        model, cfg = self.model, self.model.llm_config
        with self._locked():
            dialog = Dialog(model.tokenizer, req.system if req.system is not None else model.system)
            for turn in req.turns:
                try:
                    if turn.role == "assistant":
                        dialog.add_assistant(turn.text)
                    elif turn.audio is None:
                        dialog.add_user(text=turn.text)
                    else:
                        audio_turn(model, dialog, turn.audio, turn.instruction, name=turn.param,
                                   reserve=req.max_tokens)
                except ValueError as e:
                    raise ApiError(400, str(e), "context_length_exceeded", turn.param or "messages") from e
            n = sum(len(p) for p in dialog.parts)
            width = -(-n // self.streamer.bucket) * self.streamer.bucket
            if width + req.max_tokens > cfg.max_seq_len:
                raise ApiError(400, f"the prompt takes {n} positions (audio embeddings included); with "
                               f"max_tokens={req.max_tokens} it exceeds the model's context of {cfg.max_seq_len}: "
                               "shorten the conversation or lower max_tokens", "context_length_exceeded", "messages")
            transcripts = None
            if req.transcripts and model.can_transcribe:  # the new (last) user message's audio
                last = req.turns[-1]
                transcripts = model.transcribe([last.audio]) if last.audio is not None else []
        return dialog, transcripts

    def tokens(self, dialog: Dialog, req: ChatRequest, cancelled: threading.Event) -> Iterator[int]:
        """Decodes under the lock, one token id at a time (the caller runs this in a thread)."""
        with self._locked():
            for t in self.streamer.stream(dialog.parts, req.max_tokens, req.temperature, req.top_p, req.seed):
                if cancelled.is_set():
                    return
                yield t


class _Text:
    """Token ids -> text deltas; a trailing incomplete UTF-8 character is held back."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.sent = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        stable = text.rstrip("\ufffd")
        if not stable.startswith(self.sent):  # an earlier piece changed: resend nothing new
            return ""
        delta, self.sent = stable[len(self.sent):], stable
        return delta

    def final(self) -> str:
        return self.tok.decode(self.ids)


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="audiochat_jax", description="OpenAI-compatible audio chat over a speech LLM")
    app.state.engine = engine

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "busy": engine.lock.locked(), "waiting": engine.waiting}

    @app.get("/v1/models")
    async def models():
        m = engine.model
        return {"object": "list", "data": [{
            "id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "audiochat_jax",
            "audio": m.has_audio, "context_length": m.llm_config.max_seq_len,
            "transcripts": m.can_transcribe if m.has_audio else False}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            size = int(request.headers.get("content-length") or 0)
            if size > engine.limits.max_request_bytes:
                raise ApiError(413, f"the request is {size} bytes; the limit is {engine.limits.max_request_bytes} "
                               "(the server's --max_request_mb)", "request_too_large")
            raw = await request.body()
            if len(raw) > engine.limits.max_request_bytes:
                raise ApiError(413, f"the request is over {engine.limits.max_request_bytes} bytes",
                               "request_too_large")
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_json") from e
            req = await asyncio.to_thread(engine.parse, body)
            dialog, transcripts = await asyncio.to_thread(engine.prepare, req)
        except ApiError as e:
            return error(e)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        n_prompt = int(sum(len(p) for p in dialog.parts))
        text, cancelled = _Text(engine.model.tokenizer), threading.Event()

        def usage(n):
            return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}

        if not req.stream:
            ids = await asyncio.to_thread(lambda: list(engine.tokens(dialog, req, cancelled)))
            for t in ids:
                text.add(t)
            finish = "length" if len(ids) >= req.max_tokens else "stop"
            return openai_api.completion(cid, created, engine.model_id, text.final(), finish, usage(len(ids)),
                                         transcripts)

        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def produce():
            try:
                for t in engine.tokens(dialog, req, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, ("token", t))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as e:  # reported in the stream; the server goes on
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

        async def events():
            threading.Thread(target=produce, daemon=True).start()
            first = {"role": "assistant", "content": ""}
            extra = {"audio_transcripts": transcripts} if transcripts is not None else {}
            yield _sse(openai_api.chunk(cid, created, engine.model_id, first, **extra))
            n = 0
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "token":
                        n += 1
                        delta = text.add(value)
                        if delta:
                            yield _sse(openai_api.chunk(cid, created, engine.model_id, {"content": delta}))
                    elif kind == "end":
                        rest = text.final()[len(text.sent):]
                        if rest:
                            yield _sse(openai_api.chunk(cid, created, engine.model_id, {"content": rest}))
                        finish = "length" if n >= req.max_tokens else "stop"
                        yield _sse(openai_api.chunk(cid, created, engine.model_id, {}, finish, usage=usage(n)))
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        yield _sse({"error": {"message": f"generation failed: {value}", "type": "server_error",
                                              "param": None, "code": "generation_failed"}})
                        return
            finally:
                cancelled.set()  # a disconnected client stops the decode

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/")
    async def index():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _sse(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def warm_up(engine: Engine) -> float:
    """Compiles the decode path once (a short text reply) so the first request is not the one
    that waits for XLA; returns the seconds it took."""
    t0 = time.perf_counter()
    dialog = Dialog(engine.model.tokenizer, engine.model.system)
    dialog.add_user(text="hello")
    for _ in engine.streamer.stream(dialog.parts, 2):
        pass
    if engine.model.has_audio:
        engine.model.embed_audio([np.zeros(engine.model.features.sample_rate, np.float32)])
    return time.perf_counter() - t0
