"""Config files (``configs/*.py``, each with ``get_config(arg)``) loaded by path: they are
files, not a package, so one config (or a tool) reads another this way."""
from __future__ import annotations

import importlib.util
import os

import ml_collections


def load_module(path: str):
    """The config file at ``path`` as a module."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"_config_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str) -> ml_collections.ConfigDict:
    """``path.py[:arg]`` -> its ``get_config(arg)`` (the ``--config`` flag's syntax)."""
    path, _, arg = spec.partition(":")
    return load_module(path).get_config(arg or None)


def sibling(config_file: str, name: str, arg=None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the file ``name`` in ``config_file``'s directory."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name)).get_config(arg)
