"""One way for a frozen config dataclass to meet plain dicts (JSON files, ConfigDict sections).

    @dataclasses.dataclass(frozen=True)
    class FeatureConfig(DictConfig):
        sample_rate: int = 16000
        ...
    FeatureConfig.from_dict({"sample_rate": 8000})     # unknown keys: a ValueError naming them
    cfg.to_dict()                                       # JSON-able (tuples as lists)

``from_dict`` turns lists back into tuples (a config stays hashable: it is a jit static
argument), then calls ``_from_fields`` (a class may convert its own fields there).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _lists(x):
    return [_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


class DictConfig:
    """Mixin for frozen dataclasses: ``from_dict`` / ``to_dict`` / ``replace``."""

    #: how errors name the config (default: the class name)
    config_name: str = ""

    @classmethod
    def _from_fields(cls, d: dict) -> dict:
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.config_name or cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**cls._from_fields({k: _tuples(v) for k, v in dict(d).items()}))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _lists(getattr(self, f.name)) if not isinstance(getattr(self, f.name), Mapping)
                else dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
