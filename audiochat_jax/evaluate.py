"""``python -m audiochat_jax.evaluate --config configs/mini.py --workdir work/mini``

Evaluates an aligned speech LLM on the mini world's held-out items and writes a report
(``out_dir``/report.md + results.json + PNG plots):

* ASR WER of the cascade recognisers (our CTC conformer, pocketsphinx) on the eval audio;
* perplexity of the reference responses given the gold transcript (text), the audio (end to
  end), or an ASR transcript (cascade), for spoken QA and translation prompts;
* spoken-QA accuracy, multi-turn (spoken question + typed follow-up) and EN->FR BLEU, text vs
  audio vs cascade, on items the text path gets right (eval/qa.py explains why);
* robustness sweeps (SNR, seen/unseen voices, speaking rate, utterance length).

The eval audio is new: fresh espeak-ng renditions (eval/render.py) of held-out sentences by
voices never heard in training (``config.eval.voices="unseen"``). Fields of ``config.eval``
are documented in audiochat_jax/eval/config.py; the config file may also be an eval section
itself. ``--workdir`` fills the path fields from a pipeline work dir (workflow.layout.paths).
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np

from audiochat_jax.eval import cascade, perplexity, qa, render, report, robustness, translation
from audiochat_jax.eval.config import SWEEPS
from audiochat_jax.inference.prompting import Prompter, content_parts, response_ids
from audiochat_jax.inference.speech_model import SpeechModel


def _cap(items: list, n: int) -> list:
    """``n`` evenly spaced items (all when ``n`` is 0 or larger): item lists are grouped by
    kind (the QA list is facts, then arithmetic), so a prefix would measure one kind only."""
    if not n or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


class _ASR:
    """Lazily computed, cached transcripts per (set, item) for each recogniser."""

    def __init__(self, systems: dict):
        self.systems, self.cache = systems, {}

    def __call__(self, system: str, key: str, waves: Sequence[np.ndarray], idx: Sequence[int]) -> list[str]:
        cache = self.cache.setdefault((system, key), {})
        todo = [i for i in idx if i not in cache]
        if todo:
            for i, text in zip(todo, self.systems[system]([waves[i] for i in todo])):
                cache[i] = text
        return [cache[i] for i in idx]


def run(config) -> dict:
    """Runs the evaluation described by ``config`` (an eval section); returns a JSON-able summary."""
    from audiochat_jax.data.mini_lexicon import TRANSLATE_INSTRUCTION
    from audiochat_jax.data.mini_world import MiniWorld
    from audiochat_jax.inference.transcriber import Transcriber
    c = config
    for key in ("aligned_dir", "out_dir"):
        if not c.get(key):
            raise ValueError(f"config.eval.{key} is not set (see audiochat_jax/eval/config.py)")
    bad = set(c.sweeps) - set(SWEEPS)
    if bad:
        raise ValueError(f"config.eval.sweeps: unknown {sorted(bad)}; use some of {SWEEPS}")
    t_start = time.perf_counter()
    cache_dir = c.work_dir or os.path.join(c.out_dir, "cache")
    log = lambda msg: print(f"[evaluate {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)  # noqa: E731

    model = SpeechModel.load(c.aligned_dir, c.llm_dir, c.tokenizer, batch_rows=c.batch_size)
    tok, system = model.tokenizer, model.system
    prompter = Prompter(model, c.batch_size, c.max_new_tokens)
    world_kw = dict(c.world)
    world_kw["system_prompt"] = world_kw.get("system_prompt") or None
    world = MiniWorld(**world_kw)
    qa_items = _cap(world.qa_items("heldout"), c.n_qa)
    # Questions the alignment corpus *did* speak (new audio, eval voices): the train vs
    # held-out gap is what memorisation of training answers would show up as.
    qa_train_items = _cap(world.qa_items("train"), c.n_qa_train) if c.n_qa_train > 0 else []
    mt_items = _cap(world.multiturn_items(), c.n_multiturn)
    tr_items = _cap(world.translation_items(), c.n_translation)
    workers = c.workers or os.cpu_count() or 1

    def speak(texts, voices=c.voices, rate=None):
        return render.render(texts, c.synth, voices=voices, rate=rate, cache_dir=cache_dir, workers=workers)

    log(f"rendering {len(qa_items)} held-out + {len(qa_train_items)} training QA, {len(mt_items)} multi-turn, "
        f"{len(tr_items)} translation utterances ({c.voices} voices)")
    sets = {"qa": [q.question for q in qa_items], "multiturn": [m.question for m in mt_items],
            "translation": [t.en for t in tr_items], "qa_train": [q.question for q in qa_train_items]}
    waves, metas = {}, {}
    for name, texts in sets.items():
        waves[name], metas[name] = speak(texts)

    systems = {}
    if c.ctc_dir:
        transcriber = Transcriber(c.ctc_dir)
        systems["ctc"] = lambda w: cascade.ctc_transcripts(transcriber, w, c.batch_size)
    if c.pocketsphinx:
        ps = cascade.PocketSphinx(world.asr_sentences("train"), os.path.join(cache_dir, "pocketsphinx"),
                                  workers=workers)
        systems["pocketsphinx"] = ps.transcribe
    try:
        asr = _ASR(systems)

        log("embedding audio")
        audio = {}
        for name, w in waves.items():
            if w:
                emb, lens = model.embed_audio(w)
                audio[name] = [emb[i, :lens[i]] for i in range(len(w))]
            else:
                audio[name] = []

        def paths_for(name):
            """path -> function(indices) -> content parts (audio embeddings or ASR token ids)."""
            out = {"audio": lambda idx: [audio[name][i] for i in idx]}
            for sys_name in systems:
                out[f"cascade:{sys_name}"] = (lambda idx, s=sys_name: [
                    tok.encode(t) for t in asr(s, name, waves[name], idx)])
            return out

        text_parts = {name: [tok.encode(t) for t in texts] for name, texts in sets.items()}
        results = {"meta": {"aligned_dir": os.path.abspath(c.aligned_dir), "llm_dir": model.meta.get("llm_dir"),
                            "voices": c.voices, "items": {k: len(v) for k, v in sets.items()},
                            "system": system}}

        log("spoken QA")
        results["qa"] = qa.spoken_qa(prompter, qa_items, text_parts["qa"], paths_for("qa"), system=system)
        if qa_train_items:
            log("spoken QA, training questions")
            results["qa_train"] = qa.spoken_qa(prompter, qa_train_items, text_parts["qa_train"],
                                               paths_for("qa_train"), system=system)
        if mt_items:
            log("multi-turn")
            results["multiturn"] = qa.multi_turn(prompter, mt_items, text_parts["multiturn"], paths_for("multiturn"),
                                                 system=system)
        if tr_items:
            log("translation")
            every = list(range(len(tr_items)))
            tr_paths = {"text": text_parts["translation"], **{k: f(every) for k, f in paths_for("translation").items()}}
            results["translation"] = translation.speech_translation(
                prompter, [t.fr for t in tr_items], tr_paths, TRANSLATE_INSTRUCTION, system)

        if c.n_family_items:
            log("instruction families")
            from audiochat_jax.eval import instructions as family_lib
            pool, first = world.instruction_pool(), {}
            for instr in pool:
                first.setdefault(instr.family, instr)
            # Half held-out questions, half held-out translation sentences: audio, cascade
            # transcripts and embeddings already computed above.
            half = c.n_family_items // 2
            pick = {"qa": _cap(list(range(len(sets["qa"]))), half),
                    "translation": _cap(list(range(len(sets["translation"]))), c.n_family_items - half)}
            texts = [sets[name][i] for name, idx in pick.items() for i in idx]
            fam_paths = {}
            for name, idx in pick.items():
                for path, make in paths_for(name).items():
                    fam_paths.setdefault(path, []).extend(make(idx))
            results["families"] = family_lib.family_eval(
                prompter, list(first.values()), texts, fam_paths, system=system,
                trained=model.meta.get("families") or ["respond"])

        log("perplexity")
        results["perplexity"] = {}
        for name, instruction, refs in (("qa", "{content}", [world.reply(q.question) for q in qa_items]),
                                        ("translation", TRANSLATE_INSTRUCTION, [t.fr for t in tr_items])):
            if not refs:
                continue
            every = list(range(len(refs)))
            prefix, suffix = content_parts(tok, [{"role": "user", "content": "x"}], 0, system, instruction)
            resp = [response_ids(tok, [{"role": "user", "content": instruction.format(content=t)}], r, system)
                    for t, r in zip(sets[name], refs)]
            contents = {"text": text_parts[name], **{k: f(every) for k, f in paths_for(name).items()}}
            results["perplexity"][name] = perplexity.path_perplexities(
                prompter, [prefix] * len(refs), [suffix] * len(refs), contents, resp)

        results["asr"] = {}
        for sys_name in systems:
            hyps, refs = [], []
            for name in sets:
                idx = sorted(asr.cache.get((sys_name, name), {}))
                hyps += asr(sys_name, name, waves[name], idx)
                refs += [sets[name][i] for i in idx]
            if refs:
                results["asr"][sys_name] = {"wer": cascade.wer(refs, hyps), "n": len(refs)}

        results["robustness"] = _sweeps(c, prompter, model, qa_items, waves["qa"], metas["qa"], results["qa"],
                                        systems, speak, system, log)
        if c.long_items:
            from audiochat_jax.eval import long_audio
            log(f"long recordings: {c.long_items} x {c.long_statements} statements")
            results["long_audio"] = long_audio.run(
                prompter, world, c.synth, n_items=c.long_items, n_statements=c.long_statements,
                counterfactual=c.long_counterfactual, voices=c.voices, cache_dir=cache_dir, workers=workers,
                chunk_seconds=c.long_chunk_seconds, overlap_seconds=c.long_overlap_seconds,
                extra_stride=c.long_extra_stride, system=system)
    finally:  # the pocketsphinx worker processes, also when a section raises
        if c.pocketsphinx:
            ps.close()
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    files = report.write_report(c.out_dir, results)
    log(f"report: {files['markdown']}")
    return {"report": files["markdown"], "results": files["json"], "plots": files["plots"],
            "qa_accuracy": results["qa"]["accuracy"], "qa_text_accuracy": results["qa"]["text_accuracy"],
            "qa_train_accuracy": results.get("qa_train", {}).get("accuracy"),
            "bleu": results.get("translation", {}).get("bleu"),
            "families": {f: {"heldout": v["heldout"], "follows": v["follows"].get("audio"),
                             "agreement": v["agreement"].get("audio")}
                         for f, v in results.get("families", {}).get("families", {}).items()},
            "ppl": {k: {p: v["ppl"] for p, v in d.items()} for k, d in results["perplexity"].items()},
            "seconds": results["seconds"]}


def _sweeps(c, prompter, model, items, base_waves, base_meta, qa_result, systems, speak, system, log) -> dict:
    """QA accuracy (audio, CTC cascade) and CTC WER per condition, on the kept QA items."""
    if not c.sweeps:
        return {}
    tok = model.tokenizer
    prefix, suffix = content_parts(tok, [{"role": "user", "content": "x"}], 0, system)
    answers = lambda parts: prompter.decode(prompter.generate([[prefix, p, suffix] for p in parts]))  # noqa: E731
    kept = list(qa_result["kept"])
    kept = _cap(kept, c.sweep_items)
    if not kept:
        log("sweeps skipped: the text path answers no QA item correctly")
        return {}

    def measure(waves, idx):
        sub = [items[i] for i in idx]
        emb, lens = model.embed_audio(waves)
        out = {"n": len(idx), "audio": _acc(sub, answers([emb[k, :lens[k]] for k in range(len(idx))]))}
        if "ctc" in systems:
            hyps = systems["ctc"](waves)
            out["cascade:ctc"] = _acc(sub, answers([tok.encode(h) for h in hyps]))
            out["ctc_wer"] = cascade.wer([q.question for q in sub], hyps)
        return out

    texts = [items[i].question for i in kept]
    base = [base_waves[i] for i in kept]
    out = {}
    if "snr" in c.sweeps:
        log("sweep: snr")
        levels = [float("inf")] + [float(x) for x in c.snr_db if np.isfinite(x)]
        out["snr"] = robustness.run_sweep({("clean" if not np.isfinite(l) else f"{l:g} dB"):
                                           (robustness.with_noise(base, l, c.seed), kept) for l in levels}, measure)
    if "voices" in c.sweeps:
        log("sweep: voices")
        other = "seen" if c.voices == "unseen" else "unseen"
        out["voices"] = robustness.run_sweep({c.voices: (base, kept), other: (speak(texts, voices=other)[0], kept)},
                                             measure)
    if "rate" in c.sweeps:
        log("sweep: rate")
        out["rate"] = robustness.run_sweep({f"{r} wpm": (speak(texts, rate=int(r))[0], kept) for r in c.rates}, measure)
    if "length" in c.sweeps:
        log("sweep: length")
        bins = robustness.length_bins([base_meta[i]["seconds"] for i in kept], c.length_bins)
        out["length"] = robustness.run_sweep({label: ([base[j] for j in js], [kept[j] for j in js])
                                              for label, js in bins}, measure)
    return out


def _acc(items, replies) -> float:
    return sum(it.is_correct(r) for it, r in zip(items, replies)) / max(len(items), 1)


def main(argv=None) -> None:
    from absl import flags
    from ml_collections import config_flags

    from audiochat_jax.util.cli import absl_main

    config = config_flags.DEFINE_config_file(
        "config", None, "Config file whose `eval` section (or itself) holds the eval fields, e.g. "
        "configs/mini.py; override with --config.eval.key=value.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Pipeline work dir: fills the eval section's paths.")
    flags.mark_flags_as_required(["config"])

    def body():
        cfg = config.value
        if workdir.value:
            from audiochat_jax.workflow.layout import fill_paths
            fill_paths(cfg, workdir.value)
        print(json.dumps(run(cfg.eval if "eval" in cfg else cfg), indent=1, default=float))

    absl_main(body, argv)


if __name__ == "__main__":
    main()
