"""Speech translation (EN speech -> FR text): corpus BLEU (sacrebleu), text vs audio vs cascade.

The prompt is the typed instruction around the spoken English
(``data.mini_world.TRANSLATE_INSTRUCTION``, "translate to french: {content}"), so the audio
sits inside a user turn that also holds text — the instruction-following case. BLEU is
sacrebleu's ``corpus_bleu`` with its defaults (13a tokenisation, exp smoothing), the same
number ``sacrebleu REF < HYP`` prints.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import sacrebleu

from audiochat_jax.inference.prompting import Part, Prompter, content_parts


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses vs {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def translate(prompter: Prompter, parts: Sequence[Part], instruction: str,
              system: str | None = None) -> list[str]:
    prefix, suffix = content_parts(prompter.model.tokenizer, [{"role": "user", "content": "x"}], 0,
                                   system, instruction)
    return prompter.decode(prompter.generate([[prefix, p, suffix] for p in parts]))


def speech_translation(prompter: Prompter, references: Sequence[str], paths: Mapping[str, Sequence[Part]],
                       instruction: str, system: str | None = None, n_examples: int = 3) -> dict:
    """paths: name -> per item content part. -> {"n_items", "bleu": {path}, "examples": {path}
    (the first ``n_examples`` (reference, reply) pairs, for the report), "replies": {path} (every
    reply, in item order, so that results.json says what each BLEU was computed from)}."""
    out = {"n_items": len(references), "bleu": {}, "examples": {}, "replies": {}}
    for name, parts in paths.items():
        hyps = translate(prompter, parts, instruction, system)
        out["bleu"][name] = bleu(hyps, references)
        out["examples"][name] = [(r, h) for r, h in zip(references, hyps)][:n_examples]
        out["replies"][name] = list(hyps)
    return out
