"""``python -m audiochat_jax.study --config configs/mini.py --workdir work/mini --seeds 0,1,2``

One alignment run is one sample: the align seed alone moves held-out spoken QA by a factor
of two or more in the mini world. A *study* reruns align + evaluate once per seed on the
same world, LM, speech, CTC encoder and responses, and tabulates every report metric per
seed with its mean and standard deviation:

    WORKDIR/studies/NAME/seed_S/align/       the aligned model (align trainer, seed S)
    WORKDIR/studies/NAME/seed_S/evaluate/    its report (results.json, report.md)
    WORKDIR/studies/NAME/study.md|json       metric x seed table, mean ± sd (sample sd, n-1)

The stages before align come from the pipeline's own work dir (run as needed, cached as
usual). A config override that changes the responses section (e.g.
``--config.pipeline.instruction_pool=false``) gets its own responses under
``WORKDIR/studies/NAME/responses``; other overrides (``--config.align.kl_weight=1``) only
change align. ``--name`` defaults to a slug of the overrides ("default" without any).
Finished seeds are skipped, an interrupted align resumes from its checkpoint: rerunning
the same command continues a study. ``--compare a,b`` prints (and writes
``WORKDIR/studies/compare_a_b.md``) the mean ± sd of studies side by side.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time

import numpy as np

from audiochat_jax.workflow import layout, stages

# The metrics a study tabulates: (row name, path into results.json). "*" expands to every key.
METRICS = (
    ("qa/{p}", ("qa", "accuracy", "*")),
    ("qa/text_accuracy", ("qa", "text_accuracy")),
    ("qa_train/{p}", ("qa_train", "accuracy", "*")),
    ("multiturn/{p}", ("multiturn", "accuracy", "*")),
    ("multiturn_turn1/{p}", ("multiturn", "turn1_accuracy", "*")),
    ("bleu/{p}", ("translation", "bleu", "*")),
    ("ppl_{s}/{p}", ("perplexity", "*", "*", "ppl")),
    ("asr_wer/{p}", ("asr", "*", "wer")),
    ("{f}/follows/{p}", ("families", "families", "*", "follows", "*")),
    ("{f}/agrees/{p}", ("families", "families", "*", "agreement", "*")),
    ("{f}/wer/{p}", ("families", "families", "*", "wer", "*")),
    ("snr_{l}/{p}", ("robustness", "snr", "*", "*")),
)
# The rows a comparison shows (by prefix), in this order.
HEADLINE = ("qa/", "qa_train/audio", "multiturn/", "bleu/", "ppl_qa/", "ppl_translation/", "asr_wer/",
            "translate/", "rephrase/", "repeat/", "history/", "snr_0 dB/audio")


def _walk(node, path, names):
    if not path:
        yield names, node
        return
    head, rest = path[0], path[1:]
    if not isinstance(node, dict):
        return
    keys = list(node) if head == "*" else [head] if head in node else []
    for k in keys:
        yield from _walk(node[k], rest, names + ([k] if head == "*" else []))


def flatten(results: dict) -> dict[str, float]:
    """Every scalar metric of an evaluate ``results.json`` the study tabulates, by row name."""
    out = {}
    for template, path in METRICS:
        for names, value in _walk(results, path, []):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value is None:
                continue
            fields = re.findall(r"{(\w)}", template)
            out[template.format(**dict(zip(fields, names)))] = float(value)
    return out


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, dict]:
    """{metric: {"seeds": {seed: value}, "mean", "sd", "n"}} over the seeds that have it."""
    rows = {}
    for seed, metrics in per_seed.items():
        for k, v in metrics.items():
            rows.setdefault(k, {})[seed] = v
    out = {}
    for k, vals in rows.items():
        xs = np.array([v for v in vals.values() if v is not None and math.isfinite(v)], float)
        out[k] = {"seeds": vals, "n": int(len(xs)), "mean": float(xs.mean()) if len(xs) else None,
                  "sd": float(xs.std(ddof=1)) if len(xs) > 1 else None}
    return out


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(name: str, summary: dict, seeds: list[int], overrides: list[str], seconds: dict) -> str:
    md = [f"# Seed study `{name}`", "",
          "Overrides: " + (" ".join(f"`{o}`" for o in overrides) or "none (the config as it is)") + ".",
          f"Seeds: {', '.join(map(str, seeds))} (align seed; world, LM, speech, CTC and responses shared).", "",
          "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
          "|---|" + "---|" * (len(seeds) + 1)]
    for k, row in summary.items():
        digits = 1 if k.startswith(("bleu/", )) or "/agrees/" in k else 3
        cells = [_fmt(row["seeds"].get(s), digits) for s in seeds]
        md.append(f"| {k} | " + " | ".join(cells) + f" | {_fmt(row['mean'], digits)} ± {_fmt(row['sd'], digits)} |")
    md += ["", "Wall time per seed (align + evaluate): "
           + ", ".join(f"seed {s} {stages.fmt_seconds(t)}" for s, t in seconds.items()) + "."]
    return "\n".join(md) + "\n"


def compare(workdir: str, names: list[str]) -> str:
    """Mean ± sd of the headline metrics of finished studies, side by side."""
    studies = {}
    for n in names:
        path = os.path.join(workdir, "studies", n, "study.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: run the study {n!r} first")
        with open(path) as f:
            studies[n] = json.load(f)
    keys = []
    for prefix in HEADLINE:
        for s in studies.values():
            keys += [k for k in s["metrics"] if k.startswith(prefix) and k not in keys]
    md = ["| metric | " + " | ".join(f"{n} (n={len(s['seeds'])})" for n, s in studies.items()) + " |",
          "|---|" + "---|" * len(studies)]
    for k in keys:
        cells = []
        for s in studies.values():
            row = s["metrics"].get(k)
            digits = 1 if k.startswith("bleu/") or "/agrees/" in k else 3
            cells.append("–" if not row or row["mean"] is None else
                         f"{_fmt(row['mean'], digits)} ± {_fmt(row['sd'], digits)}")
        md.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def _slug(overrides: list[str]) -> str:
    if not overrides:
        return "default"
    s = "_".join(o.removeprefix("--config.").replace("=", "-") for o in overrides)
    return re.sub(r"[^A-Za-z0-9._-]+", "", s.replace(".", "-"))[:80]


def _marker(d: str) -> str:
    return os.path.join(d, layout.MARKER)


def _write_marker(d: str, record: dict) -> None:
    tmp = _marker(d) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=float)
    os.replace(tmp, _marker(d))


def run(config, workdir: str, seeds: list[int], name: str, overrides: list[str]) -> dict:
    """Runs the study (see the module docstring); returns its summary."""
    workdir = os.path.abspath(workdir)
    if "align" not in config or "eval" not in config:
        raise ValueError("a study needs a pipeline config with `align` and `eval` sections (configs/mini.py)")
    # The shared stages, from the work dir (run if missing).
    stages.run(config, workdir, only=[s for s in layout.STAGES if s not in ("align", "evaluate")])
    p = layout.paths(workdir)
    root = os.path.join(workdir, "studies", name)
    os.makedirs(root, exist_ok=True)
    with open(_marker(os.path.join(workdir, "responses"))) as f:
        shared = json.load(f)["config"]
    if json.loads(config.responses.to_json()) != json.loads(shared):
        # These overrides change the targets: answer them once for this study.
        p = dict(p, responses=os.path.join(root, "responses", "{split}"))
        if not os.path.exists(_marker(os.path.join(root, "responses"))):
            print(f"study {name}: the responses section differs from {workdir}/responses; answering into "
                  f"{os.path.dirname(p['responses'])}", flush=True)
            summary = stages.stage_responses(config, p)
            _write_marker(os.path.join(root, "responses"), {"summary": summary})
        layout.fill_align(config.align, p, config.pipeline.response_splits)
    per_seed, seconds = {}, {}
    for seed in seeds:
        d = os.path.join(root, f"seed_{seed}")
        align_dir, eval_dir = os.path.join(d, "align"), os.path.join(d, "evaluate")
        config.align.seed = seed
        t0 = time.perf_counter()
        if not os.path.exists(_marker(align_dir)):
            print(f"\n==== study {name}: seed {seed}: align ====", flush=True)
            _write_marker(align_dir, {"summary": stages.train(config.align, align_dir), "seed": seed})
        if not os.path.exists(_marker(eval_dir)):
            print(f"==== study {name}: seed {seed}: evaluate ====", flush=True)
            config.eval.aligned_dir, config.eval.out_dir = os.path.join(align_dir, "model"), eval_dir
            config.eval.work_dir = os.path.join(workdir, "evaluate", "cache")  # rendered audio: shared
            from audiochat_jax import evaluate
            _write_marker(eval_dir, {"summary": json.loads(json.dumps(evaluate.run(config.eval), default=float))})
        seconds[seed] = time.perf_counter() - t0
        with open(os.path.join(eval_dir, "results.json")) as f:
            per_seed[seed] = flatten(json.load(f))
    summary = summarize(per_seed)
    record = {"name": name, "overrides": overrides, "seeds": seeds, "metrics": summary}
    with open(os.path.join(root, "study.json.tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(os.path.join(root, "study.json.tmp"), os.path.join(root, "study.json"))
    md = markdown(name, summary, seeds, overrides, seconds)
    with open(os.path.join(root, "study.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    print(f"study {name}: {os.path.join(root, 'study.md')}", flush=True)
    return record


def main(argv=None) -> None:
    from absl import flags
    from ml_collections import config_flags

    from audiochat_jax.util.cli import absl_main

    config = config_flags.DEFINE_config_file(
        "config", None, "Pipeline config, e.g. configs/mini.py; --config.align.X=Y overrides are the "
        "change under study.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "The pipeline's work dir (its stages up to responses "
                                  "are reused or run).")
    seeds = flags.DEFINE_list("seeds", ["0", "1", "2"], "Align seeds, comma-separated (>= 3 for a claim).")
    name = flags.DEFINE_string("name", "", "Study name (directory under WORKDIR/studies); default: a "
                               "slug of the --config overrides, or 'default'.")
    compare_ = flags.DEFINE_list("compare", [], "Instead of running: finished studies to show side by side.")
    flags.mark_flags_as_required(["workdir"])

    def body():
        if compare_.value:
            md = compare(workdir.value, compare_.value)
            out = os.path.join(workdir.value, "studies", "compare_" + "_".join(compare_.value) + ".md")
            with open(out, "w") as f:
                f.write(md)
            print(md + f"\n{out}")
            return
        if config.value is None:
            raise ValueError("--config is required unless --compare is given")
        overrides = [a.split(" ")[0] for a in (argv or sys.argv)[1:] if a.startswith("--config.")]
        run(config.value, workdir.value, [int(s) for s in seeds.value], name.value or _slug(overrides), overrides)

    absl_main(body, argv, errors=(ValueError, FileNotFoundError, stages.StageError))


if __name__ == "__main__":
    main()
