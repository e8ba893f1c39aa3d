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

from audiochat_jax.util.cli import absl_main
from audiochat_jax.workflow.layout import STAGES
from audiochat_jax.workflow.stages import StageError, parse_stages, run


def main(argv=None) -> None:
    from absl import flags
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

    absl_main(lambda: run(config.value, workdir.value, parse_stages(only.value, "only"),
                          parse_stages(force.value, "force")),
              argv, errors=(ValueError, FileNotFoundError, StageError))


if __name__ == "__main__":
    main()
