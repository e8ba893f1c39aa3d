"""A live server on a tiny speech LLM (tests/eval_fixtures.py), in a thread, on 127.0.0.1.

    server = start_server(aligned_dir, limits)     # .url, .engine, .stop()
"""
from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import soundfile as sf

from audiochat_jax.inference.speech_model import SpeechModel
from audiochat_jax.serving.app import Engine, create_app, warm_up
from audiochat_jax.serving.openai_api import Limits


class Server:
    def __init__(self, engine: Engine):
        import uvicorn
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(aligned_dir: str, limits: Limits = Limits(), name: str = "tiny") -> Server:
    engine = Engine(SpeechModel.load(aligned_dir, batch_rows=1), limits, name)
    warm_up(engine)
    return Server(engine)


def wav_bytes(wave: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
