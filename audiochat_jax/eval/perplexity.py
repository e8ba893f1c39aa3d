"""Perplexity of reference responses given the gold transcript, the audio, or an ASR transcript.

For each held-out utterance the reference response (the tokens the chat LLM is trained to
emit for the gold reply, ``prompting.response_ids``) is scored by the frozen LLM after the
same chat prompt whose user content is

* ``text``       the gold transcript's tokens (upper bound: what the LLM would do if it read),
* ``audio``      the aligned audio embeddings (end to end),
* ``cascade:X``  the transcript of ASR system X (our CTC model, pocketsphinx) as tokens.

Perplexity is per token over the whole set: ``exp(sum NLL / sum response tokens)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from audiochat_jax.inference.prompting import Part, Prompter


def summarize(nll: np.ndarray, tokens: np.ndarray) -> dict:
    """Per-item NLL sums and token counts -> {"ppl", "nll_per_token", "tokens", "items"}."""
    total = float(np.sum(tokens))
    if total <= 0:
        raise ValueError("perplexity: no response tokens to score")
    mean = float(np.sum(nll)) / total
    return {"ppl": float(np.exp(mean)), "nll_per_token": mean, "tokens": int(total), "items": int(len(nll))}


def path_perplexities(prompter: Prompter, prefixes: Sequence[list], suffixes: Sequence[list],
                      contents: Mapping[str, Sequence[Part]], responses: Sequence[list]) -> dict:
    """{path: summarize(...)} for each content path (same prompts and responses otherwise).

    prefixes / suffixes / responses: per item token ids; contents: path -> per item part
    (token ids or audio embeddings [n, dim]).
    """
    out = {}
    for path, parts in contents.items():
        if len(parts) != len(responses):
            raise ValueError(f"perplexity: path {path!r} has {len(parts)} items, responses {len(responses)}")
        rows = [[p, c, s] for p, c, s in zip(prefixes, parts, suffixes)]
        out[path] = summarize(*prompter.score(rows, responses))
    return out
