"""The evaluation report: ``results.json`` (everything), ``report.md`` (tables) and PNG plots.

    files = write_report(out_dir, results)   # {"json": ..., "markdown": ..., "plots": [...]}

``results`` is evaluate.py's dict; every section is optional (a run without pocketsphinx or
without sweeps still gets a report). Plots use matplotlib's Agg backend (no display).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

PATH_ORDER = ("text", "audio", "cascade:ctc", "cascade:pocketsphinx")
PATH_LABELS = {"text": "text (gold transcript)", "audio": "audio (end to end)",
               "cascade:ctc": "cascade (our CTC)", "cascade:pocketsphinx": "cascade (pocketsphinx)"}


def _paths(d: dict) -> list[str]:
    return [p for p in PATH_ORDER if p in d] + sorted(p for p in d if p not in PATH_ORDER)


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _bar(ax, groups: dict[str, dict[str, float]], ylabel: str, title: str):
    paths = []
    for g in groups.values():
        paths += [p for p in _paths(g) if p not in paths]
    width = 0.8 / max(len(paths), 1)
    for k, p in enumerate(paths):
        xs = [i + k * width for i in range(len(groups))]
        ys = [(g.get(p) if g.get(p) is not None else float("nan")) for g in groups.values()]
        ax.bar(xs, ys, width, label=PATH_LABELS.get(p, p))
    ax.set_xticks([i + width * (len(paths) - 1) / 2 for i in range(len(groups))], list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


def _plots(out_dir: str, results: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)

    if results.get("perplexity"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _bar(ax, {s: {p: v["ppl"] for p, v in d.items()} for s, d in results["perplexity"].items()},
             "perplexity (lower is better)", "Reference-response perplexity")
        save(fig, "perplexity.png")
    acc = {}
    if results.get("qa"):
        acc["spoken QA"] = results["qa"]["accuracy"]
    if results.get("multiturn"):
        acc["multi-turn"] = results["multiturn"]["accuracy"]
    if acc:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _bar(ax, acc, "accuracy on items the text path gets right", "Spoken QA")
        ax.set_ylim(0, 1.05)
        save(fig, "accuracy.png")
    if results.get("translation"):
        fig, ax = plt.subplots(figsize=(4, 3.5))
        _bar(ax, {"EN->FR": results["translation"]["bleu"]}, "BLEU", "Speech translation")
        save(fig, "bleu.png")
    for name, sweep in (results.get("robustness") or {}).items():
        if not sweep:
            continue
        labels = list(sweep)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        metrics = [m for m in ("audio", "cascade:ctc") if any(sweep[l].get(m) is not None for l in labels)]
        for m in metrics:
            ax.plot(labels, [sweep[l].get(m, float("nan")) for l in labels], marker="o",
                    label=f"QA accuracy, {PATH_LABELS.get(m, m)}")
        if any(sweep[l].get("ctc_wer") is not None for l in labels):
            ax.plot(labels, [sweep[l].get("ctc_wer", float("nan")) for l in labels], marker="s",
                    linestyle="--", label="CTC WER")
        ax.set_xlabel(name)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Robustness: {name}")
        ax.legend(fontsize=7)
        save(fig, f"robustness_{name}.png")
    return files


def markdown(results: dict, plots: list[str]) -> str:
    md = ["# audiochat_jax evaluation", ""]
    meta = results.get("meta", {})
    if meta:
        md += [f"Model: `{meta.get('aligned_dir')}`; LLM: `{meta.get('llm_dir')}`; eval voices: "
               f"{meta.get('voices')}; items: {meta.get('items')}.", ""]
    if results.get("asr"):
        md += ["## ASR on the eval utterances", "",
               _table(["system", "WER", "utterances"],
                      [[k, v["wer"], v["n"]] for k, v in results["asr"].items()]), ""]
    if results.get("perplexity"):
        sets = list(results["perplexity"])
        paths = []
        for d in results["perplexity"].values():
            paths += [p for p in _paths(d) if p not in paths]
        md += ["## Perplexity of the reference responses", "",
               "Per token, `exp(sum NLL / tokens)`; the prompt's user content is the gold transcript "
               "(text), the audio, or an ASR transcript (cascade).", "",
               _table(["content"] + sets, [[PATH_LABELS.get(p, p)] + [results["perplexity"][s].get(p, {}).get("ppl")
                                                                    for s in sets] for p in paths]), ""]
    if results.get("qa"):
        q = results["qa"]
        md += ["## Spoken QA", "", f"{q['n_items']} held-out questions; the text path answers "
               f"{q['text_accuracy']:.1%}; the {q['n_kept']} it gets right are asked by speech.", "",
               _table(["content", "accuracy"], [[PATH_LABELS.get(p, p), q["accuracy"][p]] for p in _paths(q["accuracy"])]), ""]
        if results.get("qa_train"):
            t = results["qa_train"]
            md += [f"Training vs held-out questions: {t['n_items']} questions the alignment corpus spoke, "
                   f"asked with new audio; the text path answers {t['text_accuracy']:.1%}, {t['n_kept']} kept. "
                   "The two sets differ in difficulty too (see the cascades' columns): a rise on training "
                   "questions that only the audio path shows is memorised answers.", "",
                   _table(["content", "held-out questions", "training questions"],
                          [[PATH_LABELS.get(p, p), q["accuracy"][p], t["accuracy"].get(p)]
                           for p in _paths(q["accuracy"])]), ""]
        for p, ex in q.get("examples", {}).items():
            if ex and p != "text":
                md += [f"Wrong ({p}): " + "; ".join(f"“{a}” → “{b}”" for a, b in ex[:3]), ""]
    if results.get("multiturn"):
        m = results["multiturn"]
        md += ["## Multi-turn (spoken question, typed follow-up)", "",
               f"{m['n_items']} items; the text path answers {m['text_accuracy']:.1%} of follow-ups; "
               f"{m['n_kept']} kept.", "",
               _table(["content of turn 1", "turn-1 accuracy", "follow-up accuracy"],
                      [[PATH_LABELS.get(p, p), m["turn1_accuracy"].get(p), m["accuracy"][p]]
                       for p in _paths(m["accuracy"])]), ""]
    if results.get("translation"):
        t = results["translation"]
        md += ["## Speech translation EN→FR", "", f"{t['n_items']} held-out sentences; sacrebleu corpus BLEU.", "",
               _table(["content", "BLEU"], [[PATH_LABELS.get(p, p), t["bleu"][p]] for p in _paths(t["bleu"])]), ""]
    if results.get("families"):
        md += [families_markdown(results["families"])]
    if results.get("robustness"):
        md += ["## Robustness", "", "Spoken-QA accuracy (items the text path gets right) and CTC WER "
               "under one changed condition at a time.", ""]
        for name, sweep in results["robustness"].items():
            if sweep:
                md += [f"### {name}", "", _table([name, "n", "audio", "cascade (CTC)", "CTC WER"],
                                                 [[l, v.get("n"), v.get("audio"), v.get("cascade:ctc"), v.get("ctc_wer")]
                                                  for l, v in sweep.items()]), ""]
    if results.get("long_audio"):
        from audiochat_jax.eval.long_audio import markdown as long_audio_markdown
        md += [long_audio_markdown(results["long_audio"])]
    if plots:
        md += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    if results.get("seconds") is not None:
        md += [f"Evaluation took {results['seconds']:.0f} s."]
    return "\n".join(md) + "\n"


def families_markdown(fam: dict) -> str:
    """The per-family section (eval/instructions.py's result)."""
    paths = [p for p in _paths(next(iter(fam["families"].values()))["agreement"]) if p != "text"]
    short = {"audio": "audio", "cascade:ctc": "CTC casc.", "cascade:pocketsphinx": "PS casc."}
    rows = []
    for name, f in fam["families"].items():
        rows.append([f"{name}" + (" (held out)" if f["heldout"] else ""), f"`{f['template']}`"]
                    + [f["follows"].get(p) for p in ["text"] + paths]
                    + [_fmt(f["agreement"].get(p), 1) for p in paths])
    md = ["## Instruction following, per task family", "",
          f"{fam['n_items']} held-out utterances asked in each family's prompt. *follows*: share of "
          "replies closer (chrF) to the text path's reply for this family than to its reply to the bare "
          "utterance (did the instruction change what was done, as it does for text; – where the two "
          "text replies rarely differ). *agrees*: corpus BLEU against the text path's replies in the same "
          "prompt. Held-out families were never trained with audio: zero-shot.", "",
          _table(["family", "prompt"] + [f"follows: {short.get(p, p)}" for p in ["text"] + paths]
                 + [f"agrees: {short.get(p, p)}" for p in paths], rows), ""]
    rep = fam["families"].get("repeat", {}).get("wer")
    if rep:
        md += ["Content fidelity — \"repeat\" replies against the gold transcript (WER): "
               + ", ".join(f"{PATH_LABELS.get(p, p)} {_fmt(v)}" for p, v in rep.items()) + ".", ""]
    return "\n".join(md)


def write_report(out_dir: str, results: dict) -> dict:
    """Writes results.json, report.md and the plots into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    plots = _plots(out_dir, results)
    files = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "report.md"),
             "plots": plots}
    for key, text in (("json", json.dumps(results, indent=1, default=float)), ("markdown", markdown(results, plots))):
        tmp = files[key] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, files[key])
    return files
