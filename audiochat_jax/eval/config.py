"""``config.eval``: what ``python -m audiochat_jax.evaluate`` reads (defaults for the mini world).

Paths (placeholders: the pipeline fills them from its work dir; set them for a run of your own):
  aligned_dir   ``speech_llm`` model directory (train/align.py's export)
  llm_dir       the frozen ``llama`` directory ("" = the one recorded in aligned_dir)
  tokenizer     sentencepiece .model ("" = the one recorded in aligned_dir)
  ctc_dir       ``conformer_ctc`` directory for the cascade ("" = no CTC cascade)
  out_dir       where report.md, results.json and the PNG plots go
  work_dir      cache of rendered eval audio and pocketsphinx's LM ("" = out_dir/cache)
World:
  world         data.mini_world.MiniWorld kwargs (must equal the pipeline's ``config.world``:
                the eval items are held out from *that* world's training text)
  synth         data.synth.SynthConfig fields for the eval audio (voice pools must equal the
                speech stage's so "unseen" really is unseen; a new seed gives new renditions)
Sizes: n_qa, n_multiturn, n_translation (0 = all the world's items), n_family_items (held-out
  utterances asked in every instruction family of the world's pool, eval/instructions.py:
  half QA questions, half translation sentences; 0 = off), n_qa_train (questions
  the alignment corpus spoke, asked with new audio beside the held-out ones: the
  memorisation gap; 0 = off), batch_size,
  max_new_tokens, voices ("unseen" | "seen": the main tables' voices), workers (espeak and
  pocketsphinx processes, 0 = all cores).
Systems: pocketsphinx (bool: the outside-ASR cascade; ~0.4 s per utterance, run only on the
  items a path needs).
Sweeps: sweeps (which of "snr", "voices", "rate", "length"), snr_db (levels, dB; a non-finite
  level = clean), rates (words per minute), length_bins, sweep_items (QA items per sweep, 0 = all kept).
Long recordings (eval/long_audio.py; off at 0): long_items (recordings), long_statements (fact
  statements per recording), long_chunk_seconds / long_overlap_seconds (encoder windows),
  long_extra_stride (projector pooling), long_counterfactual (state values that differ from the
  world's, so only listening answers). Off by default in the mini pipeline (its time budget);
  ``--config.eval.long_items=40`` adds the section, or run ``python -m audiochat_jax.eval.long_audio``.
"""
from __future__ import annotations

import ml_collections

SWEEPS = ("snr", "voices", "rate", "length")


def default_eval_config(world: dict | None = None, synth: dict | None = None,
                        smoke: bool = False) -> ml_collections.ConfigDict:
    """The eval section for the mini world; pass the pipeline's ``world`` and ``synth`` dicts."""
    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict(dict(
        aligned_dir=placeholder(str), llm_dir="", tokenizer="", ctc_dir="",
        out_dir=placeholder(str), work_dir="",
        world=dict(world or dict(seed=0, n_entities=24, heldout_fraction=0.25, reply_style="restate",
                                 system_prompt="", n_asr_train=3000, n_asr_test=300, n_lm_dialogs=24000,
                                 n_eval=200)),
        synth=dict(synth or {}),
        # Sizes within the mini pipeline's 25-minute budget (evaluate took 4.8 min with every
        # kept item in 5 noise levels and 3 rates, 3.7 min with 200 translations and 100 sweep
        # items; BLEU on 120 sentences and sweeps on 64 items take about a minute less).
        n_qa=0, n_qa_train=100, n_multiturn=100, n_translation=120, n_family_items=64, batch_size=32,
        max_new_tokens=48,
        voices="unseen", workers=0, seed=1234,
        pocketsphinx=True,
        sweeps=SWEEPS, snr_db=(20.0, 10.0, 5.0, 0.0), rates=(130, 230), length_bins=3,
        sweep_items=64,
        long_items=0, long_statements=5, long_chunk_seconds=4.0, long_overlap_seconds=1.0,
        long_extra_stride=1, long_counterfactual=False,
    ))
    c.synth["seed"] = 1000 + int(c.synth.get("seed", 0))  # new draws of voice/rate/pitch
    if smoke:
        c.update(n_qa=8, n_qa_train=4, n_multiturn=4, n_translation=4, n_family_items=8, batch_size=8,
                 max_new_tokens=24,
                 snr_db=(10.0,), rates=(175,), length_bins=2, sweep_items=8)
    return c
