"""espeak-ng text-to-speech through ctypes, with no system package.

The ``espeakng-loader`` wheel (a hard dependency in setup.py) bundles ``libespeak-ng`` 1.52
and its voice data, so a fresh ``pip install`` can synthesise speech. We drive the C API of
``speak_lib.h`` directly: ``espeak_Initialize`` in synchronous mode, ``espeak_SetSynthCallback``
to collect the 16-bit samples, ``espeak_SetVoiceByName`` / ``espeak_SetParameter`` for voice,
rate and pitch, ``espeak_Synth`` + ``espeak_Synchronize`` per utterance.

A voice is ``"ACCENT+VARIANT"`` (``"en-us+f3"``) or just ``"ACCENT"``. espeak-ng silently
accepts an unknown variant (it falls back to the default voice), so every name is validated
against the voices and variants the library itself lists before it is used.

Determinism: libespeak-ng keeps state between utterances in C statics that neither
``espeak_Initialize`` nor ``espeak_ng_SetRandSeed`` resets (measured: the same text and voice
gave different samples, even different lengths, on consecutive calls in one process). So on
POSIX each utterance is rendered in a ``fork`` of the initialised-but-unused engine, seeded
with ``espeak_ng_SetRandSeed(seed)``: the output is then a pure function of (text, voice,
parameters, seed), whatever was synthesised before and in whichever worker. A fork costs
~1-3 ms against ~10 ms of synthesis per second of speech. A process that has imported JAX
runs JAX's threads, which a forked child must not inherit (a fork there can deadlock): it
sends each utterance to one helper subprocess instead (a fresh interpreter, no JAX), which
forks for it. Without ``os.fork`` (Windows) we synthesise in-process and the output depends
on call order.

The library is one global engine per process and is not thread-safe: calls take a lock, and
parallel synthesis uses processes (see ``audiochat_jax/data/synth.py``).
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import pickle
import struct
import subprocess
import sys
import threading

import numpy as np

from audiochat_jax.audio import io

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit()
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}

# Ranges espeak-ng documents for espeak_SetParameter (words per minute, 0-99 pitch scale).
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 99)


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded, or a voice / parameter is not valid."""


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # packed [priority byte, "lang\0"]*, ended by a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


# int callback(short *wav, int numsamples, espeak_EVENT *events): 0 = continue.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


def _languages(ptr: int | None) -> list[str]:
    out, offset = [], 0
    while ptr:
        priority = ctypes.string_at(ptr + offset, 1)[0]
        if priority == 0:
            break
        lang = ctypes.string_at(ptr + offset + 1).decode()
        out.append(lang)
        offset += 2 + len(lang)
    return out


class _Engine:
    """The process-wide espeak-ng engine (initialised once, on first use)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - setup.py installs it
            raise EspeakError("espeak-ng is missing: `pip install espeakng-loader` (a dependency "
                              "of audiochat_jax in setup.py) bundles the library and voices") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        data_path = espeakng_loader.get_data_path()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}) with voice data at "
                              f"{data_path}: reinstall espeakng-loader")
        self.lib, self.sample_rate, self.lock = lib, int(rate), threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.version = lib.espeak_Info(None).decode()
        # accent code -> voice file identifier ("en-us" -> "gmw/en-US"): espeak_SetVoiceByName
        # finds voices by file name, and only some file names equal their language code.
        self.accents = {}
        for ident, langs in self._list(None):
            if langs:
                self.accents.setdefault(langs[0].lower(), ident)
        spec = _Voice(languages=ctypes.cast(ctypes.c_char_p(b"variant"), ctypes.c_void_p))
        self.variants = sorted(ident.split("/")[-1] for ident, _ in self._list(spec))

    def _collect(self, wav, n, events):
        del events
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def _list(self, spec) -> list[tuple[str, list[str]]]:
        voices = self.lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
        out, i = [], 0
        while voices[i]:
            v = voices[i].contents
            out.append((v.identifier.decode(), _languages(v.languages)))
            i += 1
        return out

    def synth(self, text: str, voice: str, params: dict[str, int], seed: int) -> np.ndarray:
        """int16 [samples]; in a forked child where possible (see the module docstring)."""
        if hasattr(os, "fork") and "jax" in sys.modules:
            return _helper().synth(text, voice, params, seed)
        return self.synth_in_fork(text, voice, params, seed)

    def synth_in_fork(self, text: str, voice: str, params: dict[str, int], seed: int) -> np.ndarray:
        with self.lock:
            if not hasattr(os, "fork"):
                return self._synth(text, voice, params, seed)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: render, send (status, payload), exit without cleanup
                status, payload = 0, b""
                try:
                    os.close(r)
                    payload = self._synth(text, voice, params, seed).tobytes()
                except BaseException as e:  # noqa: BLE001 - forwarded to the parent
                    status, payload = 1, f"{type(e).__name__}: {e}".encode()
                try:
                    with os.fdopen(w, "wb") as f:
                        f.write(struct.pack("<iq", status, len(payload)) + payload)
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
        if len(data) < 12:
            raise EspeakError(f"espeak-ng child process died while speaking {text[:60]!r}")
        status, n = struct.unpack("<iq", data[:12])
        if status:
            raise EspeakError(data[12:].decode())
        return np.frombuffer(data[12:12 + n], np.int16).copy()

    def _synth(self, text: str, voice: str, params: dict[str, int], seed: int) -> np.ndarray:
        accent, _, variant = voice.partition("+")
        name = self.accents[accent] + ("+" + variant if variant else "")
        if self.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise EspeakError(f"espeak-ng rejected voice {voice!r} (file {name!r})")
        self.lib.espeak_ng_SetRandSeed(seed)
        for name, value in params.items():
            self.lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if err != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err} for text {text[:60]!r}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.int16)


@functools.lru_cache(maxsize=None)
def _engine() -> _Engine:
    return _Engine()


def _send(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<q", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other side closed the pipe")
    (n,) = struct.unpack("<q", head)
    return pickle.loads(stream.read(n))


def serve_stdio() -> None:
    """The helper process's loop: requests on stdin, samples on stdout, each utterance
    rendered in a fork of this (JAX-free) process's engine."""
    engine, inp, out = _engine(), sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = _recv(inp)
        except EOFError:
            return
        try:
            _send(out, (0, engine.synth_in_fork(*request)))
        except Exception as e:  # noqa: BLE001 - forwarded to the caller
            _send(out, (1, f"{type(e).__name__}: {e}"))


class _Helper:
    """A plain subprocess (``python -c``: no re-import of the caller's ``__main__``, as a
    multiprocessing spawn would) that synthesises for a process running JAX."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from audiochat_jax.audio import espeak; espeak.serve_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        atexit.register(self.close)

    def synth(self, text, voice, params, seed) -> np.ndarray:
        with self.lock:
            try:
                _send(self.process.stdin, (text, voice, dict(params), seed))
                status, payload = _recv(self.process.stdout)
            except (EOFError, OSError) as e:
                raise EspeakError(f"the espeak-ng helper process (pid {self.process.pid}) died while speaking "
                                  f"{text[:60]!r}; exit status {self.process.poll()}") from e
        if status:
            raise EspeakError(payload)
        return payload

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


@functools.lru_cache(maxsize=None)
def _helper() -> _Helper:
    return _Helper()


def version() -> str:
    """The libespeak-ng version string, e.g. ``"1.52.0"``."""
    return _engine().version


def native_sample_rate() -> int:
    """The rate espeak-ng synthesises at (22050 Hz for its formant voices)."""
    return _engine().sample_rate


def list_variants() -> list[str]:
    """Voice variants (``f1``..``f5``, ``m1``..``m8``, ``klatt``, ``whisper``, ...)."""
    return list(_engine().variants)


def list_accents(prefix: str = "en") -> list[str]:
    """Language codes of the installed voices starting with ``prefix`` (lowercase), e.g.
    ``en-us``, ``en-gb-scotland``; each is a valid ACCENT in ``"ACCENT+VARIANT"``."""
    codes = _engine().accents
    return sorted(c for c in codes if not prefix or c == prefix or c.startswith(prefix + "-"))


def validate_voice(voice: str) -> str:
    """Returns ``voice`` lower-cased (accent) if it names an installed accent and variant.

    Raises EspeakError naming the bad part and listing valid names: espeak-ng itself would
    silently fall back to its default voice for an unknown variant.
    """
    accent, _, variant = voice.partition("+")
    accents = list_accents(prefix="")
    if accent.lower() not in accents:
        en = ", ".join(list_accents())
        raise EspeakError(f"unknown espeak-ng accent {accent!r} in voice {voice!r}; English accents "
                          f"are: {en} (all languages: audiochat_jax.audio.espeak.list_accents(''))")
    if variant and variant not in _engine().variants:
        raise EspeakError(f"unknown espeak-ng variant {variant!r} in voice {voice!r} (espeak-ng "
                          f"would silently use its default voice); valid variants: "
                          f"{', '.join(_engine().variants)}")
    return accent.lower() + ("+" + variant if variant else "")


def synthesize_native(text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50,
                      pitch_range: int = 50, word_gap: int = 0, seed: int = 0
                      ) -> tuple[np.ndarray, int]:
    """Speaks ``text``; returns ``(samples int16 [samples], native sample rate)``.

    Deterministic in all arguments on POSIX (``seed`` feeds espeak's noise generator).

    ``rate`` is in words per minute (espeak's default 175), ``pitch`` and ``pitch_range`` on
    espeak's 0-99 scale (default 50), ``word_gap`` extra pause between words in units of 10 ms.
    """
    voice = validate_voice(voice)
    for name, value, (lo, hi) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE),
                                  ("pitch_range", pitch_range, PITCH_RANGE),
                                  ("word_gap", word_gap, (0, 100))):
        if not lo <= value <= hi:
            raise EspeakError(f"espeak {name}={value} is outside [{lo}, {hi}]")
    if not text.strip():
        raise EspeakError("cannot synthesise empty text")
    engine = _engine()
    wav = engine.synth(text, voice, {"rate": rate, "pitch": pitch, "range": pitch_range,
                                     "wordgap": word_gap}, seed)
    return wav, engine.sample_rate


def synthesize(text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, word_gap: int = 0, seed: int = 0,
               sample_rate: int = 16000) -> np.ndarray:
    """Speaks ``text`` as float32 [samples] in [-1, 1] at ``sample_rate`` (see synthesize_native),
    resampled from espeak's 22.05 kHz with ``audiochat_jax.audio.io.resample`` (soxr)."""
    wav, native = synthesize_native(text, voice, rate=rate, pitch=pitch, pitch_range=pitch_range,
                                    word_gap=word_gap, seed=seed)
    return io.resample(io.int16_to_float(wav), native, sample_rate)
