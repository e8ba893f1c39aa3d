"""The OpenAI-compatible server, through the official ``openai`` client against a live server
on a tiny speech LLM (tests/eval_fixtures.py; random weights, so replies are token soup —
what is checked is that each reply is exactly the one the chat code computes for the same
dialog, and that the API around it behaves).
"""
from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from audiochat_jax.audio.io import load_audio
from audiochat_jax.inference.dialog import Dialog, audio_turn
from audiochat_jax.serving.openai_api import Limits
from eval_fixtures import make_speech_llm, make_world
from serve_fixtures import b64, start_server, wav_bytes
from speech_fixtures import tone

MAX = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    world = make_world(root, max_seq_len=256)
    s = start_server(make_speech_llm(world), Limits(max_audio_seconds=2.0, max_request_bytes=400_000,
                                                   max_tokens=64, default_max_tokens=MAX))
    s.root = root
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _audio(seconds=0.6, k=5):
    return wav_bytes(tone(k, seconds).astype(np.float32) / 32768.0)


def _audio_part(data: bytes, fmt="wav"):
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}


def _reference(server, turns, system=None, max_tokens=MAX, tmp_path=None):
    """The reply the chat code gives the same dialog: turns are ("user"|"assistant", text) or
    ("audio", wav bytes, instruction)."""
    model = server.engine.model
    d = Dialog(model.tokenizer, system if system is not None else model.system)
    for t in turns:
        if t[0] == "assistant":
            d.add_assistant(t[1])
        elif t[0] == "user":
            d.add_user(text=t[1])
        else:
            path = tmp_path / f"ref{len(d.messages)}.wav"
            path.write_bytes(t[1])
            audio_turn(model, d, load_audio(str(path), 16000), t[2])
    ids = list(server.engine.streamer.stream(d.parts, max_tokens))
    return model.tokenizer.decode(ids)


def test_text_only_reply_is_the_chat_codes_reply(server, client, tmp_path):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "what is seven plus twelve"}],
                                       max_tokens=MAX)
    assert r.choices[0].message.content == _reference(server, [("user", "what is seven plus twelve")],
                                                      tmp_path=tmp_path)
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    assert r.usage.completion_tokens <= MAX and r.usage.prompt_tokens > 5
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_audio_only_and_mixed_multi_turn(server, client, tmp_path):
    wav = _audio()
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [_audio_part(wav)]}],
                                       max_tokens=MAX, extra_body={"audio_transcripts": True})
    assert r.choices[0].message.content == _reference(server, [("audio", wav, "{content}")], tmp_path=tmp_path)
    heard = r.model_extra["audio_transcripts"]
    path = tmp_path / "a.wav"
    path.write_bytes(wav)
    assert heard == server.engine.model.transcribe([load_audio(str(path), 16000)])
    # system + text turn + assistant turn + (typed instruction, audio, typed text after it)
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "where does anna live"},
                {"role": "assistant", "content": "red cat"},
                {"role": "user", "content": [{"type": "text", "text": "translate to french:"}, _audio_part(wav),
                                             {"type": "text", "text": "please"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX)
    want = _reference(server, [("user", "where does anna live"), ("assistant", "red cat"),
                               ("audio", wav, "translate to french: {content} please")],
                      system="be brief", tmp_path=tmp_path)
    assert r.choices[0].message.content == want


def test_streaming_gives_the_same_reply_token_by_token(server, client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "repeat:"}, _audio_part(_audio(0.8, 9))]}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    assert sum(bool(c.choices[0].delta.content) for c in chunks) > 1  # more than one piece
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1


def test_concurrent_requests_each_get_their_own_answer(server, client, tmp_path):
    prompts = [[{"role": "user", "content": "what is seven plus twelve"}],
               [{"role": "user", "content": [_audio_part(_audio(0.7, 3))]}],
               [{"role": "user", "content": "where does anna live"}],
               [{"role": "user", "content": [{"type": "text", "text": "repeat:"}, _audio_part(_audio(0.5, 11))]}]]
    alone = [client.chat.completions.create(model="tiny", messages=m, max_tokens=MAX).choices[0].message.content
             for m in prompts]
    assert len(set(alone)) > 1

    def ask(m, stream):
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(model="tiny", messages=m, max_tokens=MAX, stream=True))
        return client.chat.completions.create(model="tiny", messages=m, max_tokens=MAX).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(ask, prompts * 2, [False] * 4 + [True] * 4))
    assert got == alone * 2


def _bad(client, messages, **kw):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=kw.pop("model", "tiny"), messages=messages, **kw)
    return e.value.status_code, e.value.body


BAD = {  # name -> (messages, kwargs, status, code)
    "undecodable": ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": b64(b"RIFF not really a wave file at all" * 20), "format": "wav"}}]}], {}, 400, "invalid_audio"),
    "empty": ([{"role": "user", "content": [_audio_part(wav_bytes(np.zeros(0, np.float32)))]}], {}, 400,
              "empty_audio"),
    "too_long": ([{"role": "user", "content": [_audio_part(wav_bytes(np.zeros(16000 * 3, np.float32)))]}], {},
                 400, "audio_too_long"),
    "format": ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(b"abc"),
                                                                                    "format": "xyz"}}]}],
               {}, 400, "unsupported_audio_format"),
    "base64": ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%% not base64",
                                                                                    "format": "wav"}}]}],
               {}, 400, "invalid_base64"),
    "context": ([{"role": "user", "content": "the cat sat on a mat " * 40}], {}, 400, "context_length_exceeded"),
    "roles": ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], {}, 400, "invalid_messages"),
    "last_not_user": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], {}, 400,
                      "invalid_messages"),
    "max_tokens": ([{"role": "user", "content": "a"}], {"max_tokens": 1000}, 400, "invalid_value"),
    "temperature": ([{"role": "user", "content": "a"}], {"temperature": -1}, 400, "invalid_value"),
    "two_audios": ([{"role": "user", "content": [_audio_part(_audio()), _audio_part(_audio())]}], {}, 400,
                   "too_many_audio_parts"),
    "part_type": ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], {}, 400,
                  "invalid_content"),
    "model": ([{"role": "user", "content": "a"}], {"model": "gpt-4o"}, 404, "model_not_found"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_get_a_named_error_and_the_server_keeps_serving(server, client, name):
    messages, kw, status, code = BAD[name]
    got_status, body = _bad(client, messages, **dict(kw))
    assert got_status == status, body
    assert body["code"] == code and body["type"] == "invalid_request_error" and body["message"], body
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_raw_http_errors_invalid_json_and_oversized_body(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 500_000}]})
    r = httpx.post(server.url + "/v1/chat/completions", content=big, timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    bad_param = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": [_audio_part(b"xx", "wav")]}]}).json()["error"]
    assert bad_param["param"] == "messages[0].content[0].input_audio"


def test_a_long_reply_does_not_block_health_or_queued_requests(server, monkeypatch):
    slow_started = threading.Event()
    real = server.engine.streamer.stream

    def slow(parts, max_new_tokens, *a, **kw):
        for t in real(parts, max_new_tokens, *a, **kw):
            slow_started.set()
            time.sleep(0.3)
            yield t

    monkeypatch.setattr(server.engine.streamer, "stream", slow)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "what is seven"}], "max_tokens": 8,
            "stream": True}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=body) as resp:
            assert slow_started.wait(60)
            t0 = time.perf_counter()
            health = httpx.get(server.url + "/health", timeout=10).json()
            assert time.perf_counter() - t0 < 2.0
            assert health["status"] == "ok" and health["busy"] is True
            queued = threading.Thread(target=lambda: httpx.post(server.url + "/v1/chat/completions", timeout=120,
                                                                json={**body, "stream": False}))
            queued.start()
            deadline = time.time() + 10
            while httpx.get(server.url + "/health", timeout=10).json()["waiting"] < 1 and time.time() < deadline:
                time.sleep(0.05)
            assert httpx.get(server.url + "/health", timeout=10).json()["waiting"] == 1
            events = [line for line in resp.iter_lines() if line.startswith("data:")]
        queued.join()
    assert events[-1] == "data: [DONE]"
