"""Instruction following through audio, per task family: text vs audio vs cascade.

Each family of the instruction pool (text/instructions.py: respond, repeat, rephrase,
translate, a text turn before, ...) puts the same held-out utterances in its prompt; every
content path (gold transcript, audio, ASR transcripts) is answered greedily. Per family and
path:

* ``agreement``: corpus BLEU (sacrebleu) of the path's replies against the text path's
  replies in the same prompt: how far the audio behaves like the text (text = 100).
* ``follows``: the instruction-following rate: the share of items whose reply is closer
  (sentence chrF) to the text path's reply *for this family* than to its reply to the bare
  utterance (family "respond"). It asks "did the typed instruction change what was done,
  the way it changes it for text": French for translate, the words for repeat. Items where
  the two text replies are identical are left out (nothing to tell apart); a family where
  that leaves fewer than half the items gets no rate (e.g. a text turn before the content
  usually does not change the answer).
* ``wer`` (the repeat family only): word error rate of the reply against the gold
  transcript: how many of the words the path kept (beside the CTC recogniser's own WER).

``heldout``: the family was never trained with audio (not among the aligned model's
families), so its audio numbers are zero-shot.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import sacrebleu

from audiochat_jax.eval.cascade import wer
from audiochat_jax.inference.prompting import Part, Prompter
from audiochat_jax.text.instructions import DEFAULT_FAMILY, Instruction


def _chrf(hyp: str, ref: str) -> float:
    return sacrebleu.sentence_chrf(hyp, [ref]).score


def follows_rate(replies: Sequence[str], family_refs: Sequence[str], bare_refs: Sequence[str]) -> float | None:
    """Share of replies closer to ``family_refs`` than to ``bare_refs`` (chrF), over the items
    whose two references differ; None when fewer than half of them do."""
    idx = [i for i, (a, b) in enumerate(zip(family_refs, bare_refs)) if a.strip() != b.strip()]
    if len(idx) * 2 < len(replies) or not idx:
        return None
    return sum(_chrf(replies[i], family_refs[i]) > _chrf(replies[i], bare_refs[i]) for i in idx) / len(idx)


def family_eval(prompter: Prompter, instructions: Sequence[Instruction], texts: Sequence[str],
                paths: Mapping[str, Sequence[Part]], *, trained: Sequence[str], system: str | None = None,
                n_examples: int = 2) -> dict:
    """Args:
      instructions: one per family (its first pool entry); ``DEFAULT_FAMILY`` must be among them.
      texts: the gold transcripts; the text path's content is their tokens.
      paths: path name -> per item the content part (audio embeddings or ASR token ids).
      trained: the families alignment trained on (the rest are marked held out).
    Returns {"n_items", "families": {family: {"heldout", "template", "agreement": {path},
      "follows": {path}, ["wer": {path}], "examples": {path: [(transcript, reply)]}}},
      "replies": {family: {path: [reply, ...]}}}.
    """
    tok = prompter.model.tokenizer
    by_family = {i.family: i for i in instructions}
    if DEFAULT_FAMILY not in by_family:
        raise ValueError(f"family_eval needs the {DEFAULT_FAMILY!r} family (the bare utterance) as the "
                         f"reference for instruction following; got {sorted(by_family)}")
    all_paths = {"text": [tok.encode(t) for t in texts], **paths}
    replies: dict[str, dict[str, list[str]]] = {}
    for fam, instr in by_family.items():
        prefix, suffix = instr.parts(tok, system)
        replies[fam] = {name: prompter.decode(prompter.generate([[prefix, p, suffix] for p in parts]))
                        for name, parts in all_paths.items()}
    out = {"n_items": len(texts), "families": {}, "replies": replies}
    bare = replies[DEFAULT_FAMILY]["text"]
    for fam, instr in by_family.items():
        ref = replies[fam]["text"]
        entry = {"heldout": fam not in trained, "template": instr.template, "agreement": {}, "follows": {},
                 "examples": {}}
        for name, hyps in replies[fam].items():
            entry["agreement"][name] = float(sacrebleu.corpus_bleu(hyps, [ref]).score)
            if fam != DEFAULT_FAMILY:
                entry["follows"][name] = follows_rate(hyps, ref, bare)
            entry["examples"][name] = list(zip(texts, hyps))[:n_examples]
        if fam == "repeat":
            entry["wer"] = {name: wer(texts, hyps) for name, hyps in replies[fam].items()}
        out["families"][fam] = entry
    return out
