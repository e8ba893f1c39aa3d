"""Long-recording QA: questions about an early vs a late part of a long spoken recording.

    python -m audiochat_jax.eval.long_audio --config configs/mini.py --workdir work/mini \
        --out work/mini/long_audio --n_items 40 --n_statements 5 --chunk_seconds 4

A recording is ``n_statements`` fact statements about the mini world's people ("alice has a
red car", "bob lives in rome", ...), each rendered by espeak-ng (eval/render.py: its own voice
draw, like a panel of speakers) and joined with ``silence_seconds`` of silence. The question
asks about ONE of them -- the first ("early"), the middle or the last ("late") -- and half the
other statements share its attribute (other people's cars), so the answer needs the right
name bound to the right value, not just any colour. It is asked three ways, scored like
eval/qa.py (``answer_in_reply``: the reply's last value of the answer's type):

* ``closed_book``: the question alone. The mini LM was taught every true fact, so this is
  what it answers from memory; ``counterfactual=True`` states a different value than the
  world's for the asked fact, so only listening (or reading) can answer it.
* ``text``: the statements' transcripts, concatenated, then the question (one user turn).
* ``audio``: the recording's embeddings (models/long_audio.encode_long: windows of
  ``chunk_seconds``, ``extra_stride`` pooling), then the question -- the same template.

The mini LM was trained on one-sentence turns; a long multi-fact context is new to it, and
the aligned encoder never heard concatenated utterances. Low scores here are a finding about
the mini models, not a bug to hide: compare audio with text (same template) and closed_book.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
from typing import Sequence

import numpy as np

from audiochat_jax.data.mini_lexicon import ATTRIBUTES
from audiochat_jax.data.mini_world import MiniWorld, answer_in_reply
from audiochat_jax.eval import render
from audiochat_jax.inference.prompting import Prompter, content_parts
from audiochat_jax.models import long_audio
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.train import config_files

POSITIONS = ("early", "middle", "late")
PATHS = ("closed_book", "text", "audio")


@dataclasses.dataclass(frozen=True)
class LongQAItem:
    statements: tuple       # normalised transcripts, in spoken order
    target: int             # index of the statement the question is about
    position: str           # "early" | "middle" | "late"
    question: str
    answer: str             # the value stated in statements[target]
    answer_type: str        # an ATTRIBUTES key

    @property
    def transcript(self) -> str:
        return " ".join(self.statements)

    def is_correct(self, reply: str) -> bool:
        return answer_in_reply(reply, self.answer, self.answer_type)


def target_index(position: str, n_statements: int) -> int:
    if position not in POSITIONS:
        raise ValueError(f"position {position!r}: use one of {POSITIONS}")
    return {"early": 0, "middle": n_statements // 2, "late": n_statements - 1}[position]


def build_items(world: MiniWorld, n_items: int, n_statements: int = 5,
                positions: Sequence[str] = ("early", "late"), *, counterfactual: bool = False,
                seed: int = 0) -> list[LongQAItem]:
    """``n_items`` recordings' texts; item k asks about ``positions[k % len(positions)]``.

    Every statement is about a distinct (person, attribute) pair, so nothing else in the
    recording states the asked fact; about half the others share its attribute.
    """
    if n_statements < 1:
        raise ValueError(f"n_statements={n_statements}: need at least 1")
    pairs = sorted(world.facts)
    if n_statements > len(pairs):
        raise ValueError(f"n_statements={n_statements}: the world has only {len(pairs)} facts")
    rng = random.Random(f"long-audio/{world.seed}/{seed}")
    items = []
    for k in range(n_items):
        position = positions[k % len(positions)]
        name, attr = rng.choice(pairs)
        values = ATTRIBUTES[attr][0]
        value = world.facts[(name, attr)]
        if counterfactual:
            value = rng.choice([v for v in values if v != value])
        same = [p for p in pairs if p[1] == attr and p != (name, attr)]
        other = [p for p in pairs if p[1] != attr]
        n_same = min(len(same), (n_statements - 1) // 2)
        fillers = rng.sample(same, n_same) + rng.sample(other, n_statements - 1 - n_same)
        rng.shuffle(fillers)
        say = lambda n, a, v: rng.choice(ATTRIBUTES[a][3]).format(n=n, v=v)  # noqa: E731
        statements = [say(n, a, world.facts[(n, a)]) for n, a in fillers]
        t = target_index(position, n_statements)
        statements.insert(t, say(name, attr, value))
        items.append(LongQAItem(tuple(statements), t, position,
                                rng.choice(ATTRIBUTES[attr][1]).format(n=name), value, attr))
    return items


def record(items: Sequence[LongQAItem], synth_config: dict, *, voices: str = "unseen",
           silence_seconds: float = 0.5, cache_dir: str | None = None, workers: int = 1,
           sample_rate: int = 16000) -> tuple[list[np.ndarray], list[list[tuple[float, float]]]]:
    """-> (one float32 recording [samples] per item, per item the (start, end) seconds of each
    statement). Each distinct statement is rendered once (eval/render.py, cached)."""
    texts = sorted({s for it in items for s in it.statements})
    waves, _ = render.render(texts, synth_config, voices=voices, cache_dir=cache_dir, workers=workers)
    by_text = dict(zip(texts, waves))
    gap = np.zeros((int(round(silence_seconds * sample_rate)),), np.float32)
    out, spans = [], []
    for it in items:
        parts, bounds, t = [], [], 0
        for i, s in enumerate(it.statements):
            if i:
                parts.append(gap)
                t += len(gap)
            parts.append(by_text[s])
            bounds.append((t / sample_rate, (t + len(by_text[s])) / sample_rate))
            t += len(by_text[s])
        out.append(np.concatenate(parts))
        spans.append(bounds)
    return out, spans


def long_qa(prompter: Prompter, items: Sequence[LongQAItem], waves: Sequence[np.ndarray], *,
            chunk_seconds: float, overlap_seconds: float, extra_stride: int = 1,
            system: str | None = None, n_examples: int = 3) -> dict:
    """Accuracy per path (closed_book, text, audio) overall and per position.

    Returns {"n_items", "seconds" (mean recording length), "audio_embeddings" (mean count),
    "accuracy": {path}, "by_position": {position: {"n", path...}}, "audio_over_text_correct",
    "examples": {path: [(question, answer, reply), ...] wrong answers}}.
    """
    model = prompter.model
    tok, cfg = model.tokenizer, model.llm_config
    embedder, feats = model.spec.embedder(), model.features
    rows = {p: [] for p in PATHS}
    counts = []
    for k, (it, wave) in enumerate(zip(items, waves)):
        prefix, suffix = content_parts(tok, [{"role": "user", "content": "x " + it.question}], 0, system,
                                       instruction="{content} " + it.question)
        reserved = len(prefix) + len(suffix) + prompter.max_new_tokens + prompter.width_multiple - 1
        text_ids = tok.encode(it.transcript)
        if len(text_ids) + reserved > cfg.max_seq_len:
            raise ValueError(f"long_qa item {k}: its transcript is {len(text_ids)} tokens; with {reserved} reserved "
                             f"slots it exceeds the LLM's max_seq_len {cfg.max_seq_len}: lower n_statements")
        n = long_audio.embedding_count(len(wave), embedder, feats, extra_stride)
        long_audio.check_context(n, cfg.max_seq_len, reserved, extra_stride=extra_stride,
                                 seconds=len(wave) / feats.sample_rate, where=f"long_qa item {k}'s recording")
        emb = long_audio.encode_long(embedder, model.variables, feats, wave, chunk_seconds=chunk_seconds,
                                     overlap_seconds=overlap_seconds, extra_stride=extra_stride)
        counts.append(emb.shape[0])
        rows["closed_book"].append([encode_dialog(tok, [{"role": "user", "content": it.question}], system).ids])
        rows["text"].append([prefix, text_ids, suffix])
        rows["audio"].append([prefix, emb, suffix])
    ok, examples = {}, {}
    for path in PATHS:
        replies = prompter.decode(prompter.generate(rows[path])) if items else []
        ok[path] = [it.is_correct(r) for it, r in zip(items, replies)]
        examples[path] = [(it.question, it.answer, r) for it, r, good in zip(items, replies, ok[path])
                          if not good][:n_examples]
    acc = lambda idx, p: (sum(ok[p][i] for i in idx) / len(idx)) if idx else None  # noqa: E731
    every = range(len(items))
    by_pos = {}
    for pos in POSITIONS:
        idx = [i for i in every if items[i].position == pos]
        if idx:
            by_pos[pos] = {"n": len(idx), **{p: acc(idx, p) for p in PATHS}}
    kept = [i for i in every if ok["text"][i]]
    return {"n_items": len(items), "n_statements": len(items[0].statements) if items else 0,
            "seconds": float(np.mean([len(w) for w in waves]) / feats.sample_rate) if waves else 0.0,
            "audio_embeddings": float(np.mean(counts)) if counts else 0.0,
            "chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds, "extra_stride": extra_stride,
            "accuracy": {p: acc(list(every), p) for p in PATHS}, "by_position": by_pos,
            "audio_over_text_correct": acc(kept, "audio"), "examples": examples}


def run(prompter: Prompter, world: MiniWorld, synth_config: dict, *, n_items: int, n_statements: int,
        positions: Sequence[str] = ("early", "late"), counterfactual: bool = False,
        voices: str = "unseen", silence_seconds: float = 0.5, cache_dir: str | None = None,
        workers: int = 1, chunk_seconds: float, overlap_seconds: float, extra_stride: int = 1,
        system: str | None = None) -> dict:
    """build_items -> record -> long_qa: the long-recording QA result (evaluate's report
    section and this module's CLI)."""
    items = build_items(world, n_items, n_statements, tuple(positions), counterfactual=counterfactual)
    waves, _ = record(items, synth_config, voices=voices, silence_seconds=silence_seconds,
                      cache_dir=cache_dir, workers=workers)
    return long_qa(prompter, items, waves, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                   extra_stride=extra_stride, system=system)


def markdown(result: dict) -> str:
    """A report section (a table per position) for ``long_qa``'s result."""
    fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["## Long recordings: QA about early vs late statements",
             "", f"{result['n_items']} recordings of {result['n_statements']} statements, "
             f"{result['seconds']:.1f} s on average ({result['audio_embeddings']:.0f} audio embeddings; windows of "
             f"{result['chunk_seconds']:g} s, overlap {result['overlap_seconds']:g} s, extra stride "
             f"{result['extra_stride']}).", "",
             "| asked about | n | " + " | ".join(PATHS) + " |", "|---|---|" + "---|" * len(PATHS)]
    for pos, r in result["by_position"].items():
        lines.append(f"| {pos} | {r['n']} | " + " | ".join(fmt(r[p]) for p in PATHS) + " |")
    lines.append(f"| all | {result['n_items']} | " + " | ".join(fmt(result["accuracy"][p]) for p in PATHS) + " |")
    lines += ["", f"Audio accuracy on the items the text path answers correctly: "
              f"{fmt(result['audio_over_text_correct'])}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from audiochat_jax.inference.speech_model import SpeechModel
    parser = argparse.ArgumentParser(prog="python -m audiochat_jax.eval.long_audio",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline config whose `eval` section names world + synth "
                        "(e.g. configs/mini.py)")
    parser.add_argument("--workdir", default="", help="pipeline work dir: fills the eval section's paths")
    parser.add_argument("--aligned_dir", default="", help="speech_llm directory (default: the eval section's)")
    parser.add_argument("--out", required=True, help="directory for long_audio.json and long_audio.md")
    parser.add_argument("--n_items", type=int, default=40)
    parser.add_argument("--n_statements", type=int, default=5)
    parser.add_argument("--positions", default="early,late", help=f"comma-separated, of {POSITIONS}")
    parser.add_argument("--counterfactual", action="store_true",
                        help="state a value that differs from the world's for the asked fact")
    parser.add_argument("--silence_seconds", type=float, default=0.4)
    parser.add_argument("--chunk_seconds", type=float, default=4.0)
    parser.add_argument("--overlap_seconds", type=float, default=1.0)
    parser.add_argument("--extra_stride", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    args = parser.parse_args(argv)
    cfg = config_files.load(args.config)
    if args.workdir:
        from audiochat_jax.workflow.layout import fill_paths
        fill_paths(cfg, args.workdir)
    section = cfg.eval if "eval" in cfg else cfg
    aligned = args.aligned_dir or section.get("aligned_dir")
    if not aligned:
        parser.error("no speech_llm directory: pass --aligned_dir or --workdir")
    try:
        model = SpeechModel.load(aligned, section.get("llm_dir", ""), section.get("tokenizer", ""))
        world_kw = dict(section.world)
        world_kw["system_prompt"] = world_kw.get("system_prompt") or None
        result = run(Prompter(model, args.batch_size, args.max_new_tokens), MiniWorld(**world_kw),
                     dict(section.synth), n_items=args.n_items, n_statements=args.n_statements,
                     positions=args.positions.split(","), counterfactual=args.counterfactual,
                     voices=section.get("voices", "unseen"), silence_seconds=args.silence_seconds,
                     cache_dir=os.path.join(args.out, "cache"), workers=os.cpu_count() or 1,
                     chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                     extra_stride=args.extra_stride, system=model.system)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "long_audio.json"), "w") as f:
        json.dump({**result, "counterfactual": args.counterfactual}, f, indent=1)
    with open(os.path.join(args.out, "long_audio.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
