"""A model directory: the hand-off format between stages and CLIs.

Every converted or trained model (Llama, conformer, aligned speech-LLM) is written as::

    DIR/config.json     {"kind": "...", "config": {...model config...}, **extra}
    DIR/params/         orbax StandardCheckpointer tree of the parameters

so ``generate``, ``transcribe``, ``chat`` and the trainer's ``init_from`` all read one
format. ``config.json`` is plain JSON so a person can read which model a directory holds.
Writes are atomic: orbax finalises ``params/`` by rename, and ``config.json`` is written to
a temporary name and renamed last, so a directory with ``config.json`` is complete.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_model_dir(path: str, kind: str, config: dict, params: Any, **extra: Any) -> None:
    """Writes ``params`` (a pytree of arrays, possibly sharded) and ``config`` under ``path``."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params_path = os.path.join(path, PARAMS_DIR)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(params_path, params, force=True)
    if jax.process_index() == 0:
        tmp = os.path.join(path, CONFIG_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"kind": kind, "config": config, **extra}, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(path, CONFIG_FILE))


def read_model_config(path: str, kind: str | None = None) -> dict:
    """The parsed ``config.json`` of a model directory; checks ``kind`` when given."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(
            f"{cfg_path} not found: {path!r} is not a model directory (expected {CONFIG_FILE} and "
            f"{PARAMS_DIR}/ written by `python -m audiochat_jax.convert` or the trainer)")
    with open(cfg_path) as f:
        meta = json.load(f)
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{cfg_path}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    return meta


def load_model_dir(path: str, kind: str | None = None, abstract_params: Any = None) -> tuple[dict, Any]:
    """Returns ``(meta, params)``.

    ``abstract_params``: optional tree of ``jax.ShapeDtypeStruct`` (with ``sharding=``) to
    restore directly onto a mesh; without it the arrays come back as host numpy arrays.
    """
    meta = read_model_config(path, kind)
    params_path = os.path.join(os.path.abspath(path), PARAMS_DIR)
    with ocp.StandardCheckpointer() as ckptr:
        if abstract_params is None:
            # Restore as saved, onto this process's first device. Spelled out (rather than
            # orbax's no-target restore) because in a multi-process run the saved sharding's
            # topology no longer matches and orbax refuses ("Topology mismatch").
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            metadata = ckptr.metadata(params_path).item_metadata
            abstract_params = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
            # Host numpy arrays, committed to no device: the caller places them (a jit over
            # a mesh refuses arrays committed to one device).
            return meta, jax.device_get(ckptr.restore(params_path, abstract_params))
        params = ckptr.restore(params_path, abstract_params)
    return meta, params
