"""The Llama-2 chat template, with the token span of every user turn's content.

Token for token what Meta's ``Llama.chat_completion`` (llama/generation.py) and the
``chat_template`` of HF ``meta-llama/Llama-2-*-chat-hf`` produce::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user_1} [/INST] {assistant_1} </s>
    <s>[INST] {user_2} [/INST] {assistant_2} </s>
    <s>[INST] {user_3} [/INST]

Each ``<s> ... </s>`` unit is one ``sentencepiece.encode`` call on the text between the
special tokens (contents ``.strip()``-ed; the system prompt is not), exactly as Meta does;
a dialog that ends with an assistant turn (a training example) ends with ``</s>``.

For audio, the content of a user turn is replaced by audio embeddings, so we also report
where it sits: ``user_spans[i] = (start, end)`` token indices of user turn ``i``'s content.
The spans come from sentencepiece's own character offsets, not from re-encoding pieces,
so they are exact even where the content's tokens depend on what precedes them.

``audio_prompt_parts`` gives the tokens before and after the last user turn's content:
``prefix + encode(content) + suffix == encode_dialog(...).ids`` whenever the content follows
a space in the template (every turn without a system prompt, and every turn after the first).
With a system prompt the first turn's content follows ``"\\n\\n"``; sentencepiece then
encodes its first word without the "▁" word marker, so the *text* path tokenises that word
slightly differently from ``encode(content)``. The prefix and suffix are still exactly the
official tokens around the content, which is all the audio path uses.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from audiochat_jax.text.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


@dataclasses.dataclass(frozen=True)
class DialogTokens:
    """A tokenised dialog.

    ids: [length] token ids.
    user_spans: per user turn, ``(start, end)`` indices into ``ids`` of its content.
    assistant_spans: per assistant turn, ``(start, end)`` indices of what the model must
      generate after ``[/INST]``: the reply, the trailing "▁" and ``</s>`` (the loss targets).
    """
    ids: list[int]
    user_spans: list[tuple[int, int]]
    assistant_spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def _check_messages(messages, system):
    """Returns (system, [(role, content)]) after validating roles and types."""
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        if system is not None:
            raise ValueError("Got a system prompt both as `system=` and as messages[0]; "
                             "pass it once.")
        system, messages = messages[0].get("content"), messages[1:]
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system prompt must be a str, got {type(system).__name__}.")
    if not messages:
        raise ValueError("A dialog needs at least one user message.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] = {m!r}: each message must be a dict with "
                             "'role' and 'content'.")
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(
                f"messages[{i}] has role {m['role']!r} but Llama-2 chat needs roles to "
                f"alternate user/assistant/user/... starting with user; expected {want!r}.")
        if not isinstance(m["content"], str):
            raise TypeError(f"messages[{i}]['content'] must be a str, got "
                            f"{type(m['content']).__name__}.")
        out.append((m["role"], m["content"]))
    return system, out


def _span(offsets, lo, hi, text):
    """Indices [start, end) of the tokens that cover text[lo:hi] (character range)."""
    if lo >= hi:  # empty content: an empty span where it would have been
        start = next((i for i, (b, _) in enumerate(offsets) if b >= lo), len(offsets))
        return start, start
    inside = [i for i, (b, e) in enumerate(offsets)
              if (b < hi and e > lo) or (b == e and lo < b < hi)]
    start, end = inside[0], inside[-1] + 1
    for i in (start, end - 1):
        b, e = offsets[i]
        outside = text[b:lo] + text[hi:e] if b < lo or e > hi else ""
        if outside.strip():
            raise ValueError(
                f"A token covers both the user content and template text ({text[b:e]!r}); "
                "the content cannot be cut out of the prompt. Put whitespace around the "
                "content (e.g. an instruction 'Repeat: {content}' rather than '...:{content}').")
    return start, end


def _encode(tokenizer: Tokenizer, turns, system, marks):
    """Shared body of encode_dialog / audio_prompt_parts.

    turns: [(role, content)]; marks: per user turn, the (lo, hi) character range inside its
    content whose token span is reported (None = the whole stripped content).
    """
    ids, user_spans, assistant_spans = [], [], []
    user_turns = turns[0::2]
    for k, (role, content) in enumerate(user_turns):
        lo, hi = marks[k] if marks[k] is not None else (
            len(content) - len(content.lstrip()), len(content.rstrip()))
        if k == 0 and system is not None:
            pre = B_SYS + system + E_SYS
            content, lo, hi = pre + content, lo + len(pre), hi + len(pre)
        # Meta/HF strip the (system-combined) content; shift the marked range with it.
        cut = len(content) - len(content.lstrip())
        stripped = content.strip()
        lo = min(max(lo - cut, 0), len(stripped))
        hi = min(max(hi - cut, lo), len(stripped))
        text = f"{B_INST} {stripped} {E_INST}"
        base = len(B_INST) + 1
        answer = turns[2 * k + 1][1] if 2 * k + 1 < len(turns) else None
        if answer is not None:
            reply_lo = len(text) + 1
            text += f" {answer.strip()} "
        tok, offsets = tokenizer.encode_with_offsets(text)
        # The space before the content is its first word's "▁" marker (encode(content) adds
        # it too), so a lone "▁" piece there belongs to the content, not the template.
        mark_lo = base + lo - (lo < hi and text[base + lo - 1] == " ")
        s, e = _span(offsets, mark_lo, base + hi, text)
        unit_start = len(ids) + 1  # after <s>
        ids += [tokenizer.bos_id] + tok
        user_spans.append((unit_start + s, unit_start + e))
        if answer is not None:
            # The reply starts at the first token past "[/INST]" (its "▁" is the space).
            first = next((i for i, (_, end) in enumerate(offsets) if end >= reply_lo), len(tok))
            ids.append(tokenizer.eos_id)
            assistant_spans.append((unit_start + first, len(ids)))
    return DialogTokens(ids, user_spans, assistant_spans)


def encode_dialog(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]],
                  system: str | None = None) -> DialogTokens:
    """Tokenises a Llama-2 chat dialog.

    Args:
      tokenizer: the Llama (or mini-world) sentencepiece tokenizer.
      messages: ``[{"role": "user"|"assistant", "content": str}, ...]`` alternating and
        starting with user (a leading ``{"role": "system"}`` message is accepted too). Ending
        with a user turn gives a generation prompt; ending with an assistant turn gives a
        training example closed by ``</s>``.
      system: optional system prompt, placed in the first user turn as Llama-2 does.
    Returns:
      DialogTokens(ids [length], user_spans, assistant_spans).
    """
    system, turns = _check_messages(messages, system)
    return _encode(tokenizer, turns, system, [None] * len(turns[0::2]))


def audio_prompt_parts(tokenizer: Tokenizer, system: str | None = None,
                       history: Sequence[Mapping[str, str]] = (),
                       instruction: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids before and after the last user turn's content (where audio is spliced).

    Args:
      system: optional system prompt.
      history: earlier turns, ``[user, assistant, ...]`` (even length, may be empty).
      instruction: optional text around the audio in the last user turn: a template holding
        ``"{content}"`` (e.g. ``"Translate to French: {content}"``), or a plain prefix such as
        ``"Repeat:"`` which means ``"Repeat: {content}"``.
    Returns:
      (prefix_ids, suffix_ids) with ``prefix + encode(content) + suffix`` equal to
      ``encode_dialog(history + [user turn with the content]).ids`` (see the module note for
      the first turn after a system prompt).
    """
    history = list(history)
    if len(history) % 2:
        raise ValueError(f"history has {len(history)} messages; it must be whole "
                         "user/assistant exchanges, ending with an assistant turn.")
    template = "{content}" if instruction is None else instruction
    if "{content}" not in template:
        template = template.rstrip() + " {content}"
    if template.count("{content}") != 1:
        raise ValueError(f"instruction {instruction!r} must contain '{{content}}' at most once.")
    before, after = template.split("{content}")
    if before and not before[-1].isspace():
        raise ValueError(
            f"instruction {instruction!r}: put whitespace before '{{content}}' (e.g. "
            "'Say: {content}'); content glued to a word loses its \"▁\" word marker, so "
            "prefix + encode(content) + suffix would not equal the text encoding.")
    parts = []
    # Two different placeholders must give the same prefix/suffix: proof that the cut does
    # not depend on the content that will replace them.
    for placeholder in ("x", "hello world"):
        messages = history + [{"role": "user", "content": before + placeholder + after}]
        sys_, turns = _check_messages(messages, system)
        marks = [None] * (len(turns[0::2]) - 1) + [(len(before), len(before) + len(placeholder))]
        dt = _encode(tokenizer, turns, sys_, marks)
        s, e = dt.user_spans[-1]
        parts.append((dt.ids[:s], dt.ids[e:]))
    if parts[0] != parts[1]:
        raise ValueError(f"The tokens around the content depend on the content for "
                         f"instruction {instruction!r}; put whitespace around '{{content}}'.")
    return parts[0]
