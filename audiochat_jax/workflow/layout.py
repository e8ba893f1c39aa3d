"""The pipeline's work directory: every path a stage reads or writes, from the work dir alone.

    WORKDIR/corpus/      the mini world's text: LM dialogs, sentences, QA items, instructions
    WORKDIR/tokenizer/   sentencepiece model
    WORKDIR/lm/model     the frozen chat LLM (model directory)
    WORKDIR/speech/      synthetic speech (TFDS)
    WORKDIR/ctc/model    the pre-trained speech encoder
    WORKDIR/responses/SPLIT/   the LLM's answers (alignment targets)
    WORKDIR/align/model  the aligned speech LLM
    WORKDIR/evaluate/    the report

``fill_paths(config, workdir)`` writes these into a pipeline config's stage sections; the
stages (workflow/stages.py), evaluate, the study command and the stage configs share it.
Each finished stage leaves ``WORKDIR/STAGE/DONE.json`` (``MARKER``).
"""
from __future__ import annotations

import os

STAGES = ("corpus", "tokenizer", "lm", "speech", "ctc", "responses", "align", "evaluate")
MARKER = "DONE.json"
SPEECH_DIR = os.path.join("speech", "synthetic_speech", "1.0.0")  # data/synth.py's layout


# ---------------------------------------------------------------------------------------
def paths(workdir: str) -> dict[str, str]:
    w = os.path.abspath(workdir)
    j = lambda *p: os.path.join(w, *p)  # noqa: E731
    return {
        "lm_train": j("corpus", "lm_train.jsonl"), "lm_eval": j("corpus", "lm_eval.jsonl"),
        "sentences": j("corpus", "sentences.jsonl"), "world": j("corpus", "world.json"),
        "qa_text": j("corpus", "qa_{split}.jsonl"), "instructions": j("corpus", "instructions.jsonl"),
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
    if "pipeline" in config and config.pipeline.get("instruction_pool"):
        r.instructions = p["instructions"]  # the world's own pool, written by the corpus stage
    r.out_dir = p["responses"].format(split=r.split)
    if "align" in config:
        fill_align(config.align, p, config.pipeline.response_splits)
    if "eval" in config:
        fill_eval(config.eval, p)


def fill_align(c, p, response_splits) -> None:
    """The align task's path fields (train/align.py documents them). The responses of every
    split are joined by id (ids are unique across splits), so its evals find theirs."""
    a = c.align
    a.llm_dir, a.tokenizer, a.encoder_dir = p["lm_model"], p["tokenizer"], p["ctc_model"]
    a.data_dir = p["speech_data"]
    a.responses = ",".join(p["responses"].format(split=s) for s in response_splits)


def fill_eval(c, p) -> None:
    """audiochat_jax/eval/config.py's path fields."""
    c.llm_dir, c.tokenizer, c.ctc_dir = p["lm_model"], p["tokenizer"], p["ctc_model"]
    c.aligned_dir, c.out_dir = p["align_model"], p["evaluate"]
    c.work_dir = os.path.join(p["evaluate"], "cache")
