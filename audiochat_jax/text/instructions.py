"""Instruction pools: the chat prompts a transcript (or, at inference, audio) is placed in.

An ``Instruction`` is one way of asking the LLM about an utterance: a *family* (what task
it is: "respond", "repeat", "translate", ...), the user turn around the content
(``template`` with ``{content}`` once, e.g. ``"repeat: {content}"``) and optional earlier text
exchanges (``history``: a text turn before the spoken one). The prompt is the Llama-2 chat
rendering of ``history + [user turn]`` (text/chat_template.py); ``parts`` gives the tokens
before and after the content, so the text prompt and the audio prompt of one instruction
differ only in the content span.

A pool is a JSONL file, one instruction per line::

    {"family": "repeat", "template": "repeat: {content}"}
    {"family": "history", "template": "{content}",
     "history": [{"role": "user", "content": "what is two plus two"},
                 {"role": "assistant", "content": "two plus two is four."}]}

Several lines may share a family (different wordings or histories); ``draw`` picks, per
utterance, ``per_utterance`` distinct families and one line of each, seeded by the utterance
id so every host and every rerun draws the same. Why instructions at all: targets that are
only the reply to the bare utterance teach the encoder "audio -> the reply to this
utterance", and a typed instruction next to audio is then ignored; targets drawn from a pool
teach "instruction + audio -> what the LLM does with that instruction and that content"
(the self-generated cross-modal alignment of DeSTA2.5-Audio, arXiv 2507.02768).
"""
from __future__ import annotations

import dataclasses
import json
import random
from typing import Iterable, Mapping, Sequence

from audiochat_jax.text.chat_template import audio_prompt_parts

DEFAULT_FAMILY = "respond"


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One prompt shape around an utterance's content.

    family: the task name (results are reported per family; held-out families are never
      trained with audio).
    template: the user turn, ``{content}`` exactly once (a plain prefix "repeat:" means
      "repeat: {content}").
    history: earlier turns, whole exchanges of text, as ``{"role", "content"}`` dicts or
      ``(role, content)`` pairs (stored as pairs: an Instruction is hashable).
    """
    family: str
    template: str = "{content}"
    history: tuple = ()

    def __post_init__(self):
        if not self.family or not isinstance(self.family, str):
            raise ValueError(f"instruction family must be a non-empty string, got {self.family!r}")
        template = self.template if "{content}" in self.template else self.template.rstrip() + " {content}"
        if template.count("{content}") != 1:
            raise ValueError(f"instruction {self.template!r} ({self.family}): '{{content}}' must appear once")
        object.__setattr__(self, "template", template)
        history = tuple((str(m["role"]), str(m["content"])) if isinstance(m, Mapping) else (str(m[0]), str(m[1]))
                        for m in self.history)
        if len(history) % 2 or any(role != ("user", "assistant")[i % 2] for i, (role, _) in enumerate(history)):
            raise ValueError(f"instruction {self.family!r}: history must be whole user/assistant exchanges, "
                             f"starting with user (got roles {[role for role, _ in history]})")
        object.__setattr__(self, "history", history)

    def user_turn(self, content: str) -> str:
        before, after = self.template.split("{content}")
        return before + content.strip() + after

    def messages(self, content: str) -> list[dict]:
        """The dialog (ending with the user turn) for a transcript ``content``."""
        return self.history_messages() + [{"role": "user", "content": self.user_turn(content)}]

    def history_messages(self) -> list[dict]:
        return [{"role": role, "content": text} for role, text in self.history]

    def parts(self, tokenizer, system: str | None = None) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around the content: the audio prompt is
        ``prefix + audio + suffix`` (chat_template.audio_prompt_parts)."""
        return audio_prompt_parts(tokenizer, system=system, history=self.history_messages(),
                                  instruction=self.template)

    def to_dict(self) -> dict:
        d = {"family": self.family, "template": self.template}
        if self.history:
            d["history"] = self.history_messages()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Instruction":
        unknown = sorted(set(d) - {"family", "template", "history"})
        if unknown:
            raise ValueError(f"instruction {dict(d)!r}: unknown field(s) {unknown}; use family, template, history")
        if "family" not in d:
            raise ValueError(f"instruction {dict(d)!r} has no 'family'")
        return cls(str(d["family"]), str(d.get("template", "{content}")), tuple(d.get("history", ())))


def read_pool(path: str) -> list[Instruction]:
    """The instructions of a JSONL pool file (see the module docstring); errors name the line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Instruction.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{path}:{n}: not an instruction ({e}); expected "
                                 '{"family": str, "template": "... {content} ...", "history": [...]}') from e
    if not out:
        raise ValueError(f"{path}: the instruction pool is empty")
    return out


def write_pool(path: str, instructions: Iterable[Instruction]) -> int:
    lines = [json.dumps(i.to_dict(), ensure_ascii=False) for i in instructions]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    import os
    os.replace(path + ".tmp", path)
    return len(lines)


def families(pool: Sequence[Instruction]) -> list[str]:
    """The pool's families, in first-appearance order."""
    return list(dict.fromkeys(i.family for i in pool))


def select(pool: Sequence[Instruction], use: Sequence[str] = (), exclude: Sequence[str] = ()
           ) -> list[Instruction]:
    """The instructions of families ``use`` (all when empty) minus ``exclude``; names are checked."""
    known = families(pool)
    unknown = sorted(set(use) - set(known))
    if unknown:
        raise ValueError(f"instruction families {unknown} are not in the pool; it has {known}")
    overlap = sorted(set(use) & set(exclude))
    if overlap:
        raise ValueError(f"families {overlap} are both used and held out; a held-out family is never "
                         "trained with audio")
    keep = [i for i in pool if (not use or i.family in use) and i.family not in exclude]
    if not keep:
        raise ValueError(f"no instruction left after families={list(use)} minus held out {list(exclude)}")
    return keep


def draw(pool: Sequence[Instruction], key: str, per_utterance: int, seed: int = 0) -> list[Instruction]:
    """``per_utterance`` instructions of distinct families for the utterance ``key`` (0 = one of
    every family), each a uniform pick among its family's lines; a pure function of
    (pool, key, seed)."""
    by_family: dict[str, list[Instruction]] = {}
    for i in pool:
        by_family.setdefault(i.family, []).append(i)
    names = list(by_family)
    rng = random.Random(f"instructions/{seed}/{key}")
    if per_utterance and per_utterance < len(names):
        names = sorted(rng.sample(names, per_utterance), key=list(by_family).index)
    return [rng.choice(by_family[f]) for f in names]


def parse_names(spec) -> tuple[str, ...]:
    """"a,b" or ("a", "b") -> ("a", "b") (config fields accept both)."""
    if isinstance(spec, str):
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    return tuple(str(s).strip() for s in (spec or ()) if str(s).strip())
