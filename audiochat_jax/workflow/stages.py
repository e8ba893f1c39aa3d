"""The pipeline's stages on the mini world, each ``(config, paths) -> JSON-able summary``, and
the runner that does the missing ones in order (``run``); python -m audiochat_jax.pipeline is
its command line. Stages call the real functions (trainer, responses job, evaluate)."""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable

from audiochat_jax.workflow.layout import MARKER, STAGES, fill_paths, paths


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
    from audiochat_jax.text.instructions import write_pool
    n_instructions = write_pool(p["instructions"], world.instruction_pool())
    with open(p["world"], "w") as f:
        json.dump({"config": config.world.to_dict(),
                   "entities": {e.name: dict(e.facts) for e in world.entities}}, f, indent=1)
    return {"lm_dialogs": n_train, "lm_eval_dialogs": n_eval, "utterances": n_utts,
            "instructions": n_instructions}


def stage_tokenizer(config, p) -> dict:
    from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
    tc = config.tokenizer.to_dict()
    vocab_size = tc.pop("vocab_size")
    prefix = p["tokenizer"][: -len(".model")]
    train_sentencepiece(_world(config).tokenizer_corpus(), prefix, vocab_size, **tc)
    return {"vocab_size": Tokenizer(p["tokenizer"]).vocab_size}


class StageError(RuntimeError):
    """A stage could not finish; the message says why and what to do (rerun resumes)."""


def train(trainer_config, workdir: str) -> dict:
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
            # the bare question (the QA check), whatever instructions the alignment targets use
            "instructions": "", "families": "", "heldout_families": "", "per_utterance": 1,
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
    summary = train(config.lm, os.path.dirname(p["lm_model"]))
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
    return train(config.ctc, os.path.dirname(p["ctc_model"]))


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
    summary = train(config.align, os.path.dirname(p["align_model"]))
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


def fmt_seconds(seconds: float) -> str:
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
            print(f"[{k}/{len(todo)}] {stage}: done already ({fmt_seconds(results[stage]['seconds'])}), "
                  "skipped", flush=True)
            continue
        print(f"\n{'=' * 20} [{k}/{len(todo)}] {stage} {'=' * 20}  "
              f"(pipeline at {fmt_seconds(time.perf_counter() - t_start)})", flush=True)
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
        print(f"---- {stage} done in {fmt_seconds(seconds)} (CPU {fmt_seconds(cpu)}): {json.dumps(summary)[:400]}",
              flush=True)
    print(f"\npipeline finished in {fmt_seconds(time.perf_counter() - t_start)}; artifacts in {workdir}",
          flush=True)
    return results


# The config section each stage's marker records (what it was run with).
_SECTION = {"corpus": "world", "tokenizer": "tokenizer", "lm": "lm", "speech": "synth",
            "ctc": "ctc", "responses": "responses", "align": "align", "evaluate": "eval"}
