"""Spoken QA and multi-turn: accuracy of the frozen LLM's answers, text vs audio vs cascade.

What is measured is the speech path, not the LLM: the text path (gold transcript) answers
every item first, and only the items it answers correctly (``kept``) are asked by audio and
through the cascades. Audio/cascade accuracies are over ``kept``, so 1.0 means "the speech
system lost nothing"; the text accuracy over all items is reported beside them.

Multi-turn: turn 1 is a spoken question (content = audio, or a transcript), answered by the
model; turn 2 is a typed follow-up that needs turn 1's answer ("and plus three", "and where
do they live"), asked with the model's own turn-1 answer in the history. An item counts when
the follow-up's answer is right; ``kept`` = items the text path gets right at turn 2.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from audiochat_jax.inference.prompting import Part, Prompter, content_parts


def _answer(prompter: Prompter, prefix, suffix, parts: Sequence[Part]) -> list[str]:
    return prompter.decode(prompter.generate([[prefix, p, suffix] for p in parts]))


def spoken_qa(prompter: Prompter, items: Sequence, text_parts: Sequence[list],
              paths: Mapping[str, Callable[[list[int]], Sequence[Part]]], *,
              system: str | None = None, n_examples: int = 3) -> dict:
    """Args:
      items: objects with ``question`` and ``is_correct(reply)`` (data.mini_world.QAItem).
      text_parts: per item, the gold transcript's token ids.
      paths: name -> function(kept indices) -> per kept item the content part (audio
        embeddings [n, dim] or ASR transcript ids); called only for the kept items.
    Returns {"n_items", "n_kept", "kept" (indices), "text_accuracy", "accuracy": {path: acc over kept},
      "examples": {path: [(question, reply), ...] wrong answers}}.
    """
    prefix, suffix = content_parts(prompter.model.tokenizer, [{"role": "user", "content": "x"}], 0, system)
    replies = _answer(prompter, prefix, suffix, text_parts)
    correct = [it.is_correct(r) for it, r in zip(items, replies)]
    kept = [i for i, c in enumerate(correct) if c]
    out = {"n_items": len(items), "n_kept": len(kept), "kept": kept,
           "text_accuracy": sum(correct) / max(len(items), 1), "accuracy": {"text": 1.0 if kept else None},
           "examples": {"text": [(items[i].question, replies[i]) for i in range(len(items))
                                 if not correct[i]][:n_examples]}}
    for name, make in paths.items():
        if not kept:
            out["accuracy"][name] = None
            continue
        answers = _answer(prompter, prefix, suffix, make(kept))
        ok = [items[i].is_correct(a) for i, a in zip(kept, answers)]
        out["accuracy"][name] = sum(ok) / len(kept)
        out["examples"][name] = [(items[i].question, a) for i, a, good in zip(kept, answers, ok) if not good][:n_examples]
    return out


def accuracy(prompter: Prompter, items: Sequence, parts: Sequence[Part], system: str | None = None) -> float:
    """Share of ``items`` answered correctly with content ``parts`` (one per item)."""
    if not items:
        return float("nan")
    prefix, suffix = content_parts(prompter.model.tokenizer, [{"role": "user", "content": "x"}], 0, system)
    return sum(it.is_correct(a) for it, a in zip(items, _answer(prompter, prefix, suffix, parts))) / len(items)


def _multiturn_path(prompter: Prompter, items, parts: Sequence[Part], system) -> tuple[list[str], list[str]]:
    """-> (turn-1 replies, turn-2 replies) with the model's own turn-1 answer in the history."""
    tok = prompter.model.tokenizer
    prefix, suffix = content_parts(tok, [{"role": "user", "content": "x"}], 0, system)
    first = _answer(prompter, prefix, suffix, parts)
    rows = []
    for it, part, a1 in zip(items, parts, first):
        msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": a1 or "."},
                {"role": "user", "content": it.followup}]
        p, s = content_parts(tok, msgs, 0, system)
        rows.append([p, part, s])
    return first, prompter.decode(prompter.generate(rows))


def multi_turn(prompter: Prompter, items: Sequence, text_parts: Sequence[list],
               paths: Mapping[str, Callable[[list[int]], Sequence[Part]]], *,
               system: str | None = None) -> dict:
    """Items: data.mini_world.MultiTurnItem. Returns {"n_items", "n_kept",
    "text_accuracy" (turn 2, all items), "turn1_accuracy": {path}, "accuracy": {path: turn 2 over kept}}."""
    from audiochat_jax.data.mini_world import answer_in_reply
    first, second = _multiturn_path(prompter, items, text_parts, system)
    ok2 = [it.is_correct(r) for it, r in zip(items, second)]
    kept = [i for i, c in enumerate(ok2) if c]
    t1 = lambda idx, replies: sum(answer_in_reply(r, items[i].first_answer, _first_type(items[i]))
                                  for i, r in zip(idx, replies)) / max(len(idx), 1)
    out = {"n_items": len(items), "n_kept": len(kept), "text_accuracy": sum(ok2) / max(len(items), 1),
           "turn1_accuracy": {"text": t1(range(len(items)), first)}, "accuracy": {"text": 1.0 if kept else None}}
    for name, make in paths.items():
        if not kept:
            out["accuracy"][name] = out["turn1_accuracy"][name] = None
            continue
        f, s = _multiturn_path(prompter, [items[i] for i in kept], make(kept), system)
        out["turn1_accuracy"][name] = t1(kept, f)
        out["accuracy"][name] = sum(items[i].is_correct(r) for i, r in zip(kept, s)) / len(kept)
    return out


def _first_type(item) -> str:
    """The answer type of a multi-turn item's first question (numbers for arithmetic)."""
    from audiochat_jax.data.mini_lexicon import ANSWER_VALUES
    for kind, values in ANSWER_VALUES.items():
        if item.first_answer in values:
            return kind
    return "number"
