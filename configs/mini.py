"""The mini world end to end on a 2-core laptop (README's first command).

    python -m audiochat_jax.pipeline --config configs/mini.py --workdir work/mini

runs every missing stage — corpus -> tokenizer -> lm -> speech -> ctc -> responses -> align
-> evaluate — into its own subdirectory of the work dir (audiochat_jax/pipeline.py), about
a quarter of an hour on 2 CPU cores (docs/mini_world.md has the stage times), ending in
work/mini/evaluate/ (markdown report, plots, JSON).
One stage's trainer config alone (paths resolved inside WORKDIR) also runs on its own:

    python -m audiochat_jax.train --config configs/mini.py:lm,workdir=work/mini --workdir work/mini/lm

Args (comma-separated):
  smoke          shrinks everything (tiny world, models and steps) for the integration test
                 (tests/test_pipeline.py): a few minutes on 2 cores, no quality claims.
  lm | ctc | align    return only that stage's trainer config (for audiochat_jax.train).
  responses      return only the responses config (for audiochat_jax.responses).
  workdir=PATH   work dir that stage configs resolve their paths in (default work/mini).
  encoder=NAME   the speech encoder the ctc stage pre-trains and align aligns: conformer
                 (default, configs/conformer_mini.py) or wav2vec2 (configs/wav2vec2_mini.py:
                 1.17M params vs 2.22M; same steps, batch and schedule), e.g.
                 configs/mini.py:encoder=wav2vec2 with its own --workdir, or one stage:
                 configs/mini.py:ctc,encoder=wav2vec2,workdir=work/mini_w2v

Sections: ``world`` (data.mini_world.MiniWorld args; ``system_prompt`` "" = none),
``tokenizer`` (vocab size + sentencepiece options), ``lm`` / ``ctc`` / ``align`` (complete
trainer configs: ``python -m audiochat_jax.train`` reads exactly these), ``synth``
(data.synth.SynthConfig fields), ``responses`` (data.responses.ResponsesConfig fields),
``lm_check`` (held-out text QA check after lm), ``pipeline`` (synthesis workers, the splits
the LLM answers, whether targets come from the world's instruction pool), ``eval``
(audiochat_jax/eval/config.py's fields). Path fields are filled in by the pipeline from
``--workdir``. Sizes fit 2 CPU cores: Llama d=128/4 layers (~1M params), conformer
d=144/4 blocks/32-channel subsampling (2.1M).
"""
import ml_collections

from audiochat_jax.data import responses as responses_lib
from audiochat_jax.data.mini_world import MINI_VOCAB_SIZE
from audiochat_jax.train import ctc as ctc_task
from audiochat_jax.train import lm as lm_task
from audiochat_jax.eval.config import default_eval_config
from audiochat_jax.train import align_configs, config_files, loop

STAGE_ARGS = ("lm", "ctc", "align", "responses")


ENCODERS = ("conformer", "wav2vec2")
# Task families never trained with audio: the report tests them zero-shot.
HELDOUT_FAMILIES = "translate,rephrase"


def _config_file(name: str, arg: str = ""):
    """get_config(arg) of configs/NAME.py."""
    return config_files.sibling(__file__, name + ".py", arg)


def _conformer(smoke: bool) -> tuple[dict, dict]:
    """(encoder, features) sections: configs/conformer_mini.py's, shrunk for smoke."""
    base = _config_file("conformer_mini")
    encoder, features = base.encoder.to_dict(), base.features.to_dict()
    if smoke:
        encoder.update(d_model=32, n_layers=1, n_heads=2, ffn_dim=64, conv_kernel_size=7,
                       subsampling_channels=16)
    return encoder, features


def _lm(smoke: bool) -> ml_collections.ConfigDict:
    c = loop.base_config()
    c.task = "lm"
    c.lm = lm_task.task_config()
    # Dialogs average ~29 tokens (max ~62): packed ~3 to a row of 96, a step does a third of
    # the padded work (measured 0.36 vs 0.91 s/step for the same ~70 dialogs on 2 cores).
    c.lm.seq_len = 96
    c.lm.pack = True
    c.lm.eval_batches = 0
    # 1400 steps (~2.6 epochs of the dialogs): four LM seeds answered 98.5-100% of held-out
    # text questions; at 900 steps the same seeds gave 81.5-97.5%, three under lm_check's 0.9.
    c.total_steps = 1400
    c.batch_size = 24
    c.log_every = 100
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.end_lr_ratio = 0.05
    c.checkpoint.every_steps = 400
    if smoke:
        # Big enough to give varied replies (a 40-step model answered everything "tttt"),
        # so alignment in the test has real, utterance-specific targets.
        c.lm.model.update(dim=64, n_layers=2, n_heads=2, n_kv_heads=2, ffn_dim=128)
        c.total_steps, c.batch_size, c.log_every = 200, 16, 50
        c.optimizer.warmup_steps = 5
        c.checkpoint.every_steps = 1000
    return c


def _ctc(smoke: bool, encoder_kind: str = "conformer") -> ml_collections.ConfigDict:
    if encoder_kind == "wav2vec2":  # its sections, log-mel SpecAugment off (it reads waveforms)
        w2v = _config_file("wav2vec2_mini", "smoke" if smoke else "")
        c = ctc_task.full_config(w2v.encoder.to_dict(), w2v.features.to_dict())
        c.ctc.spec_augment = w2v.ctc.spec_augment
    else:
        encoder, features = _conformer(smoke)
        c = ctc_task.full_config(encoder, features)
    c.ctc.eval_splits = ("test_seen", "test_unseen")
    # espeak at 140-210 wpm: of the 3600 clips 2486 last <= 2 s, 1104 2-3 s, 10 3-4 s (longer
    # ones are dropped and counted by the input pipeline); each bucket is one more compile.
    c.ctc.buckets = (32000, 48000)
    c.ctc.max_label_length = 128
    # Noise augmentation: espeak's digital silence leaves a clean-trained model helpless in
    # noise (CER ~70% at 10 dB in a probe).
    c.ctc.noise_prob = 0.5
    c.ctc.noise_snr_db = (5.0, 30.0)
    # 0.24 s/step at batch 8 on 2 quiet cores (32-channel stem, see configs/conformer_mini.py).
    # Same compute, more updates: batch 8 x 1000 steps reached CER 4.6% / WER 16.6% on
    # test_seen where batch 16 x 500 reached 6.8% / 23.8%. 800 steps: ~4 min of the budget.
    c.total_steps = 800
    c.ctc.eval_batches = 20  # 160 clips per test split: CER/WER to about +-1 point, half the time
    c.batch_size = 8
    c.log_every = 50
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.end_lr_ratio = 0.02
    c.checkpoint.every_steps = 300
    if smoke:
        c.total_steps, c.batch_size, c.log_every = 20, 8, 10
        c.ctc.eval_batches = 1
        c.ctc.buckets = (48000,)  # one bucket, one compile (smoke utterances last 1-3 s)
        c.optimizer.warmup_steps = 2
        c.checkpoint.every_steps = 1000
    return c


def _align(smoke: bool) -> ml_collections.ConfigDict:
    """The align task's trainer config (train/align_configs.py)."""
    c = align_configs.mini_config(smoke)
    c.align.eval_splits = ("test_seen", "test_unseen")
    c.align.instruction = "{content}"  # = config.responses.instruction (checked by the task)
    c.align.heldout_families = HELDOUT_FAMILIES
    c.align.max_prefix_length, c.align.max_suffix_length = 32, 4  # the pool: <= 30 and 3 tokens
    c.align.buckets = (48000,)  # <= 3 s: all but 10 of the 3600 clips; one compile
    if smoke:
        c.align.buckets = (48000,)
    return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    flags = {a for a in args if "=" not in a}
    unknown = (flags - {"smoke", *STAGE_ARGS}) | (set(opts) - {"workdir", "encoder"})
    if unknown:
        raise ValueError(f"configs/mini.py: unknown arg(s) {sorted(unknown)}; use smoke, "
                         f"one of {STAGE_ARGS}, workdir=PATH, encoder=NAME")
    if opts.get("encoder", "conformer") not in ENCODERS:
        raise ValueError(f"configs/mini.py: encoder={opts['encoder']!r}; use one of {ENCODERS}")
    smoke = "smoke" in flags
    c = ml_collections.ConfigDict()
    c.world = dict(seed=0, n_entities=24, heldout_fraction=0.25, reply_style="restate",
                   system_prompt="", n_asr_train=3000, n_asr_test=300, n_lm_dialogs=24000,
                   n_eval=200)
    c.tokenizer = dict(vocab_size=MINI_VOCAB_SIZE)
    c.lm = _lm(smoke)
    # Gate after lm: greedy text answers to held-out QA questions (never asked in training).
    c.lm_check = dict(min_accuracy=0.9, max_new_tokens=32, batch_size=64)
    # Synthetic speech: data.synth.SynthConfig fields (voices, rates, pitches: its defaults);
    # clean audio (noise is added on the fly in ctc training and in the eval sweeps).
    c.synth = dict(seed=0, noise_prob=0.0)
    # Pipeline knobs: synthesis processes (0 = all cores); the speech splits the frozen LLM
    # answers (train: alignment targets; test_seen: held-out audio-vs-text perplexity).
    # instruction_pool: True makes the alignment targets the LM's answers to each transcript
    # in the instructions of the world's pool (corpus/instructions.jsonl: respond, repeat,
    # a text turn before; rephrase and translate held out), weighted by
    # align.family_weights. Off by default: over three align seeds it improved the trained
    # family (repeat) but cost held-out spoken QA (docs/mini_world.md has the studies).
    c.pipeline = dict(synth_workers=0, response_splits=("train", "test_seen", "test_unseen"),
                      instruction_pool=False)
    c.ctc = _ctc(smoke, opts.get("encoder", "conformer"))
    c.responses = responses_lib.default_config()
    c.responses.update(instruction="{content}", max_new_tokens=48, batch_size=64, shard_size=4096,
                       per_utterance=0, heldout_families=HELDOUT_FAMILIES)
    c.align = _align(smoke)
    if smoke:
        c.world.update(n_entities=8, n_asr_train=48, n_asr_test=8, n_lm_dialogs=400, n_eval=8)
        c.tokenizer.vocab_size = 400
        c.lm_check.update(min_accuracy=0.0, max_new_tokens=16, batch_size=8)
        c.synth.update(accents=["en-us", "en-gb"], variants=["m1", "f1"],
                       unseen_accents=[], unseen_variants=["m3"])
        c.responses.update(max_new_tokens=24, batch_size=8)
    # The report (audiochat_jax/evaluate.py): same world and voice pools as the training data.
    c.eval = default_eval_config(c.world.to_dict(), c.synth.to_dict(), smoke=smoke)
    stage = flags & set(STAGE_ARGS)
    if len(stage) > 1:
        raise ValueError(f"configs/mini.py: give at most one stage arg, got {sorted(stage)}")
    if stage:
        from audiochat_jax.workflow.layout import fill_paths
        fill_paths(c, opts.get("workdir", "work/mini"))
        (name,) = stage
        if name == "responses":
            out = ml_collections.ConfigDict()
            out.responses = c.responses
            return out
        return c[name]
    return c
