"""``python -m audiochat_jax.pipeline --config configs/mini.py --workdir work/mini``

Runs the whole method on the mini world, every missing stage in order:

  corpus     the templated world (data/mini_world.py): LM dialogs, ASR sentences, eval items
  tokenizer  sentencepiece trained on the corpus (text/tokenizer.py)
  lm         the tiny chat Llama (`lm` task of the trainer), then a held-out text QA check
  speech     espeak-ng speech in many voices, some unseen (data/synth.py -> TFDS)
  ctc        the conformer pre-trained with CTC (`ctc` task), CER/WER on seen/unseen voices
  responses  the frozen LLM answers every transcript (data/responses.py)
  align      modal-invariance alignment (`align` task): encoder + projector learn to make
             the frozen LLM answer audio as it answers text
  evaluate   the report: perplexity, spoken QA, translation, robustness (audiochat_jax/evaluate.py)

Each stage writes into WORKDIR/STAGE/ and finishes by atomically writing WORKDIR/STAGE/DONE.json
(its summary and wall time); a stage whose DONE.json exists is skipped, so a rerun (or a
run after an interruption) does only what is missing — the trainer stages also resume
from their own checkpoints. ``--force STAGE`` deletes that stage's directory and reruns it;
later stages are not invalidated automatically (a stage is cached by existence, not by a
hash of its inputs): force them too, e.g. ``--force lm,responses,align,evaluate``.
``--only STAGE[,STAGE]`` runs just those stages (their inputs must exist).
Override any config field on the command line: ``--config.lm.total_steps=2000``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Callable

from audiochat_jax import huge_pages

STAGES = ("corpus", "tokenizer", "lm", "speech", "ctc", "responses", "align", "evaluate")
MARKER = "DONE.json"
SPEECH_DIR = os.path.join("speech", "synthetic_speech", "1.0.0")  # data/synth.py's layout


# ---------------------------------------------------------------------------------------
# Layout: every path a stage reads or writes, from the work dir alone
# ---------------------------------------------------------------------------------------
def paths(workdir: str) -> dict[str, str]:
    w = os.path.abspath(workdir)
    j = lambda *p: os.path.join(w, *p)  # noqa: E731
    return {
        "lm_train": j("corpus", "lm_train.jsonl"), "lm_eval": j("corpus", "lm_eval.jsonl"),
        "sentences": j("corpus", "sentences.jsonl"), "world": j("corpus", "world.json"),
        "qa_text": j("corpus", "qa_{split}.jsonl"),
        "tokenizer": j("tokenizer", "spm.model"),
        "lm_model": j("lm", "model"), "lm_text_qa": j("lm", "text_qa"),
        "speech": j("speech"), "speech_data": j(SPEECH_DIR),
        "ctc_model": j("ctc", "model"),
        "responses": j("responses", "{split}"),
        "align_model": j("align", "model"), "align_untrained": j("align", "untrained"),
        "evaluate": j("evaluate"),
    }


def fill_paths(config, workdir: str) -> None:
    """Sets every path field of ``config``'s stage sections for ``workdir`` (in place)."""
    p = paths(workdir)
    config.lm.lm.dialogs, config.lm.lm.eval_dialogs = p["lm_train"], p["lm_eval"]
    config.lm.lm.tokenizer = p["tokenizer"]
    config.ctc.ctc.data_dir = p["speech_data"]
    r = config.responses
    r.llm_dir, r.tokenizer, r.dataset_dir = p["lm_model"], p["tokenizer"], p["speech_data"]
    r.out_dir = p["responses"].format(split=r.split)
    if "align" in config:
        _fill_align(config.align, p, config.pipeline.response_splits)
    if "eval" in config:
        _fill_eval(config.eval, p)


def _fill_align(c, p, response_splits) -> None:
    """The align task's path fields (train/align.py documents them). The responses of every
    split are joined by id (ids are unique across splits), so its evals find theirs."""
    a = c.align
    a.llm_dir, a.tokenizer, a.encoder_dir = p["lm_model"], p["tokenizer"], p["ctc_model"]
    a.data_dir = p["speech_data"]
    a.responses = ",".join(p["responses"].format(split=s) for s in response_splits)


def _fill_eval(c, p) -> None:
    """audiochat_jax/eval/config.py's path fields."""
    c.llm_dir, c.tokenizer, c.ctc_dir = p["lm_model"], p["tokenizer"], p["ctc_model"]
    c.aligned_dir, c.out_dir = p["align_model"], p["evaluate"]
    c.work_dir = os.path.join(p["evaluate"], "cache")


# ---------------------------------------------------------------------------------------
# Stages: each (config, paths) -> JSON-able summary; they call the real functions
# ---------------------------------------------------------------------------------------
def _world(config):
    from audiochat_jax.data.mini_world import MiniWorld
    kw = config.world.to_dict()
    kw["system_prompt"] = kw["system_prompt"] or None
    return MiniWorld(**kw)


def _write_jsonl(path: str, rows) -> int:
    tmp = path + ".tmp"
    n = 0
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def stage_corpus(config, p) -> dict:
    from audiochat_jax.train import lm
    world = _world(config)
    os.makedirs(os.path.dirname(p["lm_train"]), exist_ok=True)
    n_train = lm.save_dialogs(p["lm_train"], world.lm_dialogs())
    # Held-out LM eval: the held-out QA questions with their gold replies (never trained on).
    eval_dialogs = [{"messages": [{"role": "user", "content": q.question},
                                  {"role": "assistant", "content": world.reply(q.question)}],
                     "system": world.system_prompt} for q in world.qa_items("heldout")]
    n_eval = lm.save_dialogs(p["lm_eval"], eval_dialogs)
    for split in ("train", "heldout"):
        _write_jsonl(p["qa_text"].format(split=split),
                     ({"id": f"qa-{split}-{i:04d}", "text": q.question}
                      for i, q in enumerate(world.qa_items(split))))
    # Speech: ASR-train sentences (CTC + alignment) and held-out test sentences, spoken by
    # seen voices (test_seen) and by voices never heard in training (test_unseen).
    rows = [{"id": f"train-{i:05d}", "text": t, "transcript": t, "split": "train"}
            for i, t in enumerate(world.asr_sentences("train"))]
    for split in ("test_seen", "test_unseen"):
        rows += [{"id": f"{split}-{i:05d}", "text": t, "transcript": t, "split": split}
                 for i, t in enumerate(world.asr_sentences("test"))]
    n_utts = _write_jsonl(p["sentences"], rows)
    with open(p["world"], "w") as f:
        json.dump({"config": config.world.to_dict(),
                   "entities": {e.name: dict(e.facts) for e in world.entities}}, f, indent=1)
    return {"lm_dialogs": n_train, "lm_eval_dialogs": n_eval, "utterances": n_utts}


def stage_tokenizer(config, p) -> dict:
    from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
    tc = config.tokenizer.to_dict()
    vocab_size = tc.pop("vocab_size")
    prefix = p["tokenizer"][: -len(".model")]
    train_sentencepiece(_world(config).tokenizer_corpus(), prefix, vocab_size, **tc)
    return {"vocab_size": Tokenizer(p["tokenizer"]).vocab_size}


class StageError(RuntimeError):
    """A stage could not finish; the message says why and what to do (rerun resumes)."""


def _train(trainer_config, workdir: str) -> dict:
    from audiochat_jax.train import loop
    try:
        result = loop.train(trainer_config, workdir)
    except loop.NonFiniteError as e:
        raise StageError(str(e)) from e
    if result["status"] != "done":
        raise StageError(f"training in {workdir} stopped early ({result['status']} at step "
                           f"{result['step']}); rerun the pipeline to resume it")
    return {"step": result["step"], "train": _floats(result["train"]), "eval": _floats(result["eval"])}


def _floats(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def text_qa_accuracy(config, p) -> dict:
    """Greedy text answers of the trained LM to the QA questions (held-out: never asked in
    training; train: asked), via the responses job; -> accuracies per split."""
    from audiochat_jax.data import responses
    world = _world(config)
    out = {}
    for split in ("heldout", "train"):
        items = world.qa_items(split)
        rc = responses.ResponsesConfig.from_dict({
            **config.responses.to_dict(), "dataset_dir": p["qa_text"].format(split=split),
            "out_dir": os.path.join(p["lm_text_qa"], split),
            "max_new_tokens": config.lm_check.max_new_tokens,
            "batch_size": config.lm_check.batch_size})
        responses.run(rc, progress=False)
        with open(os.path.join(rc.out_dir, responses.RESPONSES_FILE)) as f:
            replies = {r["id"]: r["response_text"] for r in map(json.loads, f)}
        correct = [q.is_correct(replies.get(f"qa-{split}-{i:04d}", "")) for i, q in enumerate(items)]
        out[split] = sum(correct) / max(len(correct), 1)
        for kind in sorted({q.kind for q in items}):  # facts vs arithmetic
            mine = [c for q, c in zip(items, correct) if q.kind == kind]
            out[f"{split}/{kind}"] = sum(mine) / len(mine)
        bad = [(q.question, replies.get(f"qa-{split}-{i:04d}")) for i, q in enumerate(items)
               if not correct[i]][:3]
        print(f"  text QA [{split}]: {out[split]:.1%} of {len(items)} ("
              + ", ".join(f"{k.split('/')[1]} {v:.1%}" for k, v in out.items() if k.startswith(split + "/")) + ")"
              + (f"; e.g. wrong: {bad}" if bad else ""), flush=True)
    return out


def stage_lm(config, p) -> dict:
    summary = _train(config.lm, os.path.dirname(p["lm_model"]))
    summary["text_qa"] = text_qa_accuracy(config, p)
    if summary["text_qa"]["heldout"] < config.lm_check.min_accuracy:
        print(f"WARNING: the LM answers only {summary['text_qa']['heldout']:.1%} of held-out text "
              f"questions (< config.lm_check.min_accuracy={config.lm_check.min_accuracy}); the "
              "speech results measure little until it does: raise config.lm.total_steps and "
              "rerun with --force lm,responses,align,evaluate", flush=True)
    return summary


def stage_speech(config, p) -> dict:
    from audiochat_jax.data import synth
    cfg = synth.SynthConfig.from_dict(config.synth.to_dict())
    items = synth.read_sentences(p["sentences"])
    synth.synthesize_corpus(items, p["speech"], cfg, workers=config.pipeline.synth_workers or None)
    with open(os.path.join(p["speech"], "synth_config.json")) as f:
        return {"counts": json.load(f)["counts"]}


def stage_ctc(config, p) -> dict:
    return _train(config.ctc, os.path.dirname(p["ctc_model"]))


def stage_responses(config, p) -> dict:
    from audiochat_jax.data import responses
    out = {}
    for split in config.pipeline.response_splits:
        rc = responses.ResponsesConfig.from_dict({
            **config.responses.to_dict(), "split": split,
            "out_dir": p["responses"].format(split=split)})
        summary = responses.run(rc)
        out[split] = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    return out


def evaluate_untrained(trainer_config, out_dir: str) -> dict:
    """The task's own eval of its freshly initialised state (for align: the pre-trained
    encoder with an untrained projector), exported to ``out_dir/model`` as a baseline."""
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import loop, optimizer, tasks
    loop.check_config(trainer_config)
    mesh = sharding.make_mesh(trainer_config.mesh_shape)
    task = tasks.get_task(trainer_config.task)(trainer_config, mesh)
    tx, _ = optimizer.make_optimizer(trainer_config)
    state, _, _ = loop.init_train_state(task, tx, mesh, trainer_config.seed)
    result = _floats(task.evaluate(state.variables, task.frozen)) if task.evaluate else {}
    if task.export is not None:
        task.export(state.variables, os.path.join(out_dir, "model"))
    print(f"  untrained: {json.dumps(result)[:300]}", flush=True)
    return result


def stage_align(config, p) -> dict:
    """The baseline first: the align task's eval of its initial state (pre-trained encoder,
    untrained projector), exported to align/untrained/model; then the real run."""
    if "align" not in config:
        raise StageError("config has no `align` section: the align task (train/align.py) is "
                           "not available in this checkout")
    baseline = evaluate_untrained(config.align, p["align_untrained"])
    summary = _train(config.align, os.path.dirname(p["align_model"]))
    summary["untrained_eval"] = baseline
    return summary


def stage_evaluate(config, p) -> dict:
    if "eval" not in config:
        raise StageError("config has no `eval` section: audiochat_jax/evaluate.py is not "
                           "available in this checkout")
    from audiochat_jax import evaluate
    return json.loads(json.dumps(evaluate.run(config.eval), default=float))


STAGE_FNS: dict[str, Callable[[Any, dict], dict]] = {
    "corpus": stage_corpus, "tokenizer": stage_tokenizer, "lm": stage_lm,
    "speech": stage_speech, "ctc": stage_ctc, "responses": stage_responses,
    "align": stage_align, "evaluate": stage_evaluate}


# ---------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------
def _use_compilation_cache(path: str) -> None:
    # On 2 cores compiling is a large share of a stage (the align step alone takes minutes):
    # XLA's persistent cache lets a rerun, and the align baseline's eval followed by the
    # trained eval (the same program), compile once.
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def is_done(workdir: str, stage: str) -> bool:
    return os.path.exists(os.path.join(workdir, stage, MARKER))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (synthesis workers): with wall
    time it shows how contended the machine was (2 free cores: CPU ~ 2x wall at best)."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def parse_stages(spec: str, what: str) -> list[str]:
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise ValueError(f"--{what}: unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    return names


def run(config, workdir: str, only: list[str] = (), force: list[str] = ()) -> dict:
    """Runs the missing stages (or ``only`` those) in order; returns {stage: marker dict}."""
    workdir = os.path.abspath(workdir)
    fill_paths(config, workdir)
    _use_compilation_cache(os.path.join(workdir, "jax_cache"))
    p = paths(workdir)
    for stage in force:
        if os.path.exists(os.path.join(workdir, stage)):
            shutil.rmtree(os.path.join(workdir, stage))
    todo = [s for s in STAGES if (not only or s in only)]
    t_start, results = time.perf_counter(), {}
    for k, stage in enumerate(todo, 1):
        marker = os.path.join(workdir, stage, MARKER)
        if os.path.exists(marker):
            with open(marker) as f:
                results[stage] = json.load(f)
            print(f"[{k}/{len(todo)}] {stage}: done already ({_fmt(results[stage]['seconds'])}), "
                  "skipped", flush=True)
            continue
        print(f"\n{'=' * 20} [{k}/{len(todo)}] {stage} {'=' * 20}  "
              f"(pipeline at {_fmt(time.perf_counter() - t_start)})", flush=True)
        os.makedirs(os.path.join(workdir, stage), exist_ok=True)
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        summary = STAGE_FNS[stage](config, p)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        results[stage] = {"stage": stage, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                          "summary": summary,
                          "config": config[_SECTION[stage]].to_json() if _SECTION.get(stage) else None}
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results[stage], f, indent=2)
        os.replace(tmp, marker)  # written last, atomically: its presence means "complete"
        print(f"---- {stage} done in {_fmt(seconds)} (CPU {_fmt(cpu)}): {json.dumps(summary)[:400]}",
              flush=True)
    print(f"\npipeline finished in {_fmt(time.perf_counter() - t_start)}; artifacts in {workdir}",
          flush=True)
    return results


# The config section each stage's marker records (what it was run with).
_SECTION = {"corpus": "world", "tokenizer": "tokenizer", "lm": "lm", "speech": "synth",
            "ctc": "ctc", "responses": "responses", "align": "align", "evaluate": "eval"}


def main(argv=None) -> None:
    from absl import app, flags, logging
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config", None, "Pipeline config, e.g. configs/mini.py (or configs/mini.py:smoke); "
        "override fields with --config.key=value.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Work dir: one subdirectory per stage.")
    only = flags.DEFINE_string("only", "", f"Comma-separated stages to run (of {', '.join(STAGES)}); "
                               "default: every missing one.")
    force = flags.DEFINE_string("force", "", "Comma-separated stages to delete and rerun "
                                "(later stages are not invalidated: list them too).")
    flags.mark_flags_as_required(["config", "workdir"])

    def _main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            run(config.value, workdir.value, parse_stages(only.value, "only"),
                parse_stages(force.value, "force"))
        except (ValueError, StageError) as e:  # named input/config errors; preemption
            sys.exit(f"error: {e}")

    app.run(_main, argv=argv)


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # CPU: the per-step buffers in 2 MiB pages
    main()
