"""Provenance of precomputed targets: which model, tokenizer, prompt, decoding and code wrote them.

    fingerprint_dir(llm_dir + "/params")  -> "sha256:..." over every file's path and bytes
    sha256_file("tokenizer.model")         -> "sha256:..."
    code_version()                         -> {"package": "0.1.0", "git": "<commit>[+dirty]"}
    write_or_check(path, record)           first run: write; rerun: refuse a changed setup

A record is a dict of sections; the ``IDENTITY`` sections must match for a rerun to add to
an output directory (entries naming paths may differ: directories move, hashes do not).
Every run appends ``{"started", "code_version", ...}`` to ``record["runs"]``.

Paths may be local or anything ``tf.io.gfile`` reads (``gs://...``), so a pod job hashes the
same bytes every host restores.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import datetime
import json
import uuid
from typing import Any, Mapping

# orbax writes wall-clock timestamps into these; they say when, not what, so hashing them
# would give the same weights a new fingerprint on every save.
VOLATILE_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_CHUNK = 1 << 24  # 16 MiB reads: a 13 GB checkpoint hashes at disk speed without big buffers


def gfile():
    """tf.io.gfile (local and gs:// paths), with TensorFlow kept off the accelerators JAX owns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass  # TF already initialised: its device list is fixed, nothing to hide
    return tf.io.gfile


def _update_from_file(h, path: str) -> None:
    with gfile().GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def sha256_file(path: str) -> str:
    """``"sha256:<hex>"`` of one file's bytes."""
    if not gfile().exists(path):
        raise FileNotFoundError(f"{path} does not exist (cannot fingerprint it)")
    h = hashlib.sha256()
    _update_from_file(h, path)
    return "sha256:" + h.hexdigest()


def fingerprint_dir(path: str) -> str:
    """``"sha256:<hex>"`` over (relative path, size, sha256) of every file under ``path``,
    sorted by path, skipping orbax's timestamp files (``VOLATILE_FILES``)."""
    fs = gfile()
    if not fs.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (expected the model's params/ "
                                "written by save_model_dir)")
    files = []
    for root, _, names in fs.walk(path):
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
        h.update(f"{rel}\0{fs.stat(full).length}\0{inner.hexdigest()}\n".encode())
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


IDENTITY = ("llm", "tokenizer", "prompt", "decoding", "data")
PATH_KEYS = ("dir", "path", "dataset_dir")


def write_atomic(path: str, text: str) -> None:
    """Write a temporary file, then rename: readers see the old file or the whole new one."""
    fs = gfile()
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.GFile(tmp, "w") as f:
        f.write(text)
    fs.rename(tmp, path, overwrite=True)


def changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved, now)}`` over the ``IDENTITY`` sections, path entries ignored."""
    out = {}
    for sec in IDENTITY:
        old, new = saved.get(sec, {}), now.get(sec, {})
        for key in sorted(set(old) | set(new)):
            if key not in PATH_KEYS and old.get(key) != new.get(key):
                out[f"{sec}.{key}"] = (old.get(key), new.get(key))
    return out


def write_or_check(path: str, record: Mapping[str, Any], **run_info: Any) -> dict[str, Any]:
    """Writes ``record`` (first run) or checks it against the saved one (rerun), appending
    this run's entry either way; raises ValueError naming every changed field."""
    fs = gfile()
    entry = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
             "code_version": code_version(), **run_info}
    if fs.exists(path):
        with fs.GFile(path) as f:
            saved = json.load(f)
        changed = changes(saved, record)
        if changed:
            out = os.path.dirname(path)
            raise ValueError(
                f"{path}: {out} holds targets from a different setup; changed (saved, now): "
                f"{changed}. Use a new config.responses.out_dir, or delete {out} to start over")
        record = {**saved, "runs": saved.get("runs", []) + [entry]}
    else:
        record = {**record, "runs": [entry]}
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True))
    return record
