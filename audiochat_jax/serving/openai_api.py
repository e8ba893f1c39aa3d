"""The OpenAI chat-completions format, checked and turned into a speech-LLM dialog.

A request is validated in full before any model work, and every problem becomes an
``ApiError`` with the HTTP status, the OpenAI-style error ``code`` and the ``param`` (the JSON
path of the offending field), so a client sees *what* is wrong and *where*::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[1].content[0]",
               "code": "invalid_audio"}}

Messages: ``system`` (first only), then ``user`` / ``assistant`` alternating, ending with
``user`` (the Llama-2 chat template's rule). Content is a string or a list of parts
``{"type": "text", "text": ...}`` and ``{"type": "input_audio", "input_audio": {"data":
<base64>, "format": "wav" | "flac" | "mp3" | ...}}``; a user message holds at most one audio
part, and its text parts before / after the audio become the typed instruction around it
(``"translate to french: {content}"``), exactly as the chat CLI's ``words audio.wav`` does.
Assistant messages are text.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import tempfile
from typing import Any

import numpy as np

from audiochat_jax.audio.io import AudioError, load_audio

# The container formats libsndfile decodes (soundfile's available_formats), by file suffix.
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "aiff", "aif", "au", "caf", "w64")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, OpenAI-style ``code`` and ``param``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's ``--max_*`` flags)."""
    max_audio_seconds: float = 30.0
    max_request_bytes: int = 16 << 20
    max_tokens: int = 512           # the most a request may set max_tokens to
    default_max_tokens: int = 128   # when it sets none


@dataclasses.dataclass
class Turn:
    """One message, checked: text, or audio (16 kHz float32) with its instruction template."""
    role: str
    text: str = ""
    audio: np.ndarray | None = None
    instruction: str = "{content}"
    param: str = ""                 # where the audio came from, for error messages


@dataclasses.dataclass
class ChatRequest:
    model: str
    system: str | None
    turns: list[Turn]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    transcripts: bool


def _num(body: dict, key: str, default, kind, lo=None, hi=None, lo_open=False):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise ApiError(400, f"{key} must be a{'n integer' if kind is int else ' number'}, got {value!r}",
                       "invalid_type", key)
    value = kind(value)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        bounds = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ApiError(400, f"{key}={value} is out of range {bounds}", "invalid_value", key)
    return value


def decode_audio(data: Any, fmt: Any, param: str, limits: Limits, sample_rate: int) -> np.ndarray:
    """base64 audio bytes of a container ``fmt`` -> float32 [samples] at ``sample_rate`` (mono)."""
    if not isinstance(fmt, str) or fmt.lower().lstrip(".") not in AUDIO_FORMATS:
        raise ApiError(400, f"unsupported audio format {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}",
                       "unsupported_audio_format", param + ".format")
    if not isinstance(data, str) or not data:
        raise ApiError(400, "input_audio.data must be a non-empty base64 string", "invalid_audio", param + ".data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"input_audio.data is not valid base64 ({e})", "invalid_base64", param + ".data") from e
    if not raw:
        raise ApiError(400, "the audio is empty (0 bytes)", "invalid_audio", param + ".data")
    fd, path = tempfile.mkstemp(suffix="." + fmt.lower().lstrip("."))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        return load_audio(path, sample_rate, max_seconds=limits.max_audio_seconds)
    except AudioError as e:
        code = "audio_too_long" if e.problem.startswith("too long") else (
            "empty_audio" if e.problem.startswith(("empty", "too short")) else "invalid_audio")
        fix = {"audio_too_long": f"send at most {limits.max_audio_seconds:g} s (the server's --max_audio_seconds)",
               "empty_audio": "send a recording with speech in it",
               "invalid_audio": f"send {', '.join(AUDIO_FORMATS[:3])} bytes with the matching format"}[code]
        raise ApiError(400, f"{param}: {e.problem}; {fix}", code, param) from e
    finally:
        os.unlink(path)


def _content(msg: dict, i: int, role: str, limits: Limits, sample_rate: int) -> Turn:
    content, where = msg.get("content"), f"messages[{i}].content"
    if isinstance(content, str):
        return Turn(role, text=content)
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where} must be a string or a non-empty list of content parts", "invalid_content", where)
    before, after, audio, param = [], [], None, ""
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{p}.text must be a string", "invalid_content", p + ".text")
            (after if audio is not None else before).append(part["text"].strip())
        elif kind == "input_audio":
            if role != "user":
                raise ApiError(400, f"{p}: only user messages can hold audio", "invalid_content", p)
            if audio is not None:
                raise ApiError(400, f"{p}: one audio part per user message; send each recording as its own "
                               "user message", "too_many_audio_parts", p)
            spec = part.get("input_audio")
            if not isinstance(spec, dict):
                raise ApiError(400, f"{p}.input_audio must be an object with data and format", "invalid_content",
                               p + ".input_audio")
            audio, param = decode_audio(spec.get("data"), spec.get("format"), p + ".input_audio", limits,
                                        sample_rate), p
        else:
            raise ApiError(400, f"{p}: unknown content part type {kind!r}; use 'text' or 'input_audio'",
                           "invalid_content", p + ".type")
    before, after = " ".join(t for t in before if t), " ".join(t for t in after if t)
    if audio is None:
        return Turn(role, text=" ".join(t for t in (before, after) if t))
    esc = lambda t: t.replace("{", "{{").replace("}", "}}")  # noqa: E731  (a str.format template)
    instruction = (esc(before) + " " if before else "") + "{content}" + (" " + esc(after) if after else "")
    return Turn(role, audio=audio, instruction=instruction, param=param)


def parse_request(body: Any, *, model_id: str, limits: Limits, sample_rate: int, has_audio: bool) -> ChatRequest:
    """Checks a decoded JSON body; returns the request or raises ``ApiError``."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {model!r} is not served here; this server serves {model_id!r} "
                       "(GET /v1/models)", "model_not_found", "model")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "n must be 1 (one reply per request)", "invalid_value", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "invalid_messages", "messages")
    system, turns = None, []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ApiError(400, f"messages[{i}] must be an object with role and content", "invalid_messages",
                           f"messages[{i}]")
        role = msg["role"]
        if role in ("system", "developer"):
            if i != 0:
                raise ApiError(400, f"messages[{i}]: a system message may only come first", "invalid_messages",
                               f"messages[{i}].role")
            t = _content(msg, i, "system", limits, sample_rate)
            system = t.text
            continue
        want = "user" if len(turns) % 2 == 0 else "assistant"
        if role != want:
            raise ApiError(400, f"messages[{i}] has role {role!r}; Llama-2 chat needs user and assistant turns "
                           f"to alternate, starting with user: expected {want!r}", "invalid_messages",
                           f"messages[{i}].role")
        turn = _content(msg, i, role, limits, sample_rate)
        if turn.audio is not None and not has_audio:
            raise ApiError(400, f"messages[{i}]: this model has no audio encoder", "invalid_content", turn.param)
        turns.append(turn)
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be a user message", "invalid_messages", "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _num({key: max_tokens}, key, limits.default_max_tokens, int, 1, limits.max_tokens)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "invalid_type", "stream")
    transcripts = body.get("audio_transcripts", False)
    if not isinstance(transcripts, bool):
        raise ApiError(400, "audio_transcripts must be true or false", "invalid_type", "audio_transcripts")
    return ChatRequest(
        model=model_id, system=system, turns=turns, max_tokens=max_tokens,
        temperature=_num(body, "temperature", 0.0, float, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, float, 0.0, 1.0, lo_open=True),
        seed=_num(body, "seed", 0, int, 0, 2 ** 31 - 1), stream=stream, transcripts=transcripts)


def completion(cid: str, created: int, model: str, text: str, finish: str, usage: dict,
               transcripts: list[str] | None) -> dict:
    out = {"id": cid, "object": "chat.completion", "created": created, "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
           "usage": usage}
    if transcripts is not None:
        out["audio_transcripts"] = transcripts
    return out


def chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None, **extra) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
