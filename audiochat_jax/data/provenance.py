"""Fingerprints that say which model, tokenizer and code wrote a set of response targets.

    fingerprint_dir(llm_dir + "/params")  -> "sha256:..." over every file's path and bytes
    sha256_file("tokenizer.model")         -> "sha256:..."
    code_version()                         -> {"package": "0.1.0", "git": "<commit>[+dirty]"}

Paths may be local or anything ``tf.io.gfile`` reads (``gs://...``), so a pod job hashes the
same bytes every host restores.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any, Mapping

# orbax writes wall-clock timestamps into these; they say when, not what, so hashing them
# would give the same weights a new fingerprint on every save.
VOLATILE_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_CHUNK = 1 << 24  # 16 MiB reads: a 13 GB checkpoint hashes at disk speed without big buffers


def _gfile():
    """tf.io.gfile (local and gs:// paths), with TensorFlow kept off the accelerators JAX owns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass  # TF already initialised: its device list is fixed, nothing to hide
    return tf.io.gfile


def _update_from_file(h, path: str) -> None:
    with _gfile().GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def sha256_file(path: str) -> str:
    """``"sha256:<hex>"`` of one file's bytes."""
    if not _gfile().exists(path):
        raise FileNotFoundError(f"{path} does not exist (cannot fingerprint it)")
    h = hashlib.sha256()
    _update_from_file(h, path)
    return "sha256:" + h.hexdigest()


def fingerprint_dir(path: str) -> str:
    """``"sha256:<hex>"`` over (relative path, size, sha256) of every file under ``path``,
    sorted by path, skipping orbax's timestamp files (``VOLATILE_FILES``)."""
    gfile = _gfile()
    if not gfile.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (expected the model's params/ "
                                "written by save_model_dir)")
    files = []
    for root, _, names in gfile.walk(path):
        for name in names:
            if name not in VOLATILE_FILES:
                full = os.path.join(root, name)
                files.append((os.path.relpath(full, path), full))
    if not files:
        raise FileNotFoundError(f"{path} holds no files to fingerprint")
    h = hashlib.sha256()
    for rel, full in sorted(files):
        inner = hashlib.sha256()
        _update_from_file(inner, full)
        h.update(f"{rel}\0{gfile.stat(full).length}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def code_version() -> dict[str, str]:
    """The package version and, when run from a git checkout, its commit (``+dirty`` if the
    tracked files differ from it). Read-only git calls; "unknown" outside a checkout."""
    import audiochat_jax
    here = os.path.dirname(os.path.abspath(audiochat_jax.__file__))

    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        rev = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"package": audiochat_jax.__version__, "git": rev}


def diff(saved: Mapping[str, Any], now: Mapping[str, Any], keys) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` for the ``keys`` whose values differ."""
    return {k: (saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)}
