"""``ctc``: speech-encoder CTC pre-training (conformer or wav2vec2) on a TFDS speech dataset,
with CER/WER evals.

Input: data/input.py's ``SpeechInput`` over a prepared TFDS directory (``config.ctc.data_dir``,
e.g. the mini world's espeak corpus or LibriSpeech): raw 16 kHz audio in a few padded
bucket shapes, transcripts as CTC label ids. On device, inside the jitted step (data/input.py
measured that features belong there): optional noise augmentation at a random SNR
(espeak audio has digital silence; clean-trained models collapse under noise), log-mel
(audio/features.py), SpecAugment, the conformer (train mode: dropout, batch-norm statistics
updated as ``model_state``), CTC loss normalised per label token. An utterance whose labels
cannot fit its frames at all (fast speech at 40 ms frames: ~1% of the mini world's espeak
clips) has no CTC alignment; it is weighted 0 (its loss would be ~1e5 and its gradient
noise) and counted in the ``infeasible`` metric (``{split}/infeasible`` in eval).

``config.encoder.kind`` picks the encoder (models/speech_llm.py ``ENCODERS``):
  * "conformer" (the default when absent): the rest of ``config.encoder`` holds the
    ConformerConfig fields; the pipeline above.
  * "wav2vec2": the rest holds the Wav2Vec2Config fields (models/wav2vec2.py). The model
    takes the (noise-augmented) 16 kHz waveform itself: no log-mel, and
    ``config.ctc.spec_augment`` (masks on log-mel features) does not apply — it must have 0
    masks (an error says so otherwise). The model's own SpecAugment-style time masking of
    the projected features (``encoder.mask_time_prob`` / ``mask_time_length``, drawn from
    the dropout rng in training) takes its place. ``config.features`` then only gives the
    sample rate recorded in the export.

Eval, per split in ``config.ctc.eval_splits``: one pass, loss per label token (feasible
utterances), greedy CTC decoding and corpus CER/WER with jiwer (every utterance) — ``{split}/cer`` etc. in the logs and TensorBoard.
Export: a ``conformer_ctc`` model directory (models/conformer.save: variables, encoder config,
feature config, vocabulary), what ``python -m audiochat_jax.transcribe --ckpt`` reads; for
"wav2vec2" a ``wav2vec2`` directory (models/wav2vec2.save, ``Wav2Vec2CTC`` names, with the same
``features`` and ``vocab`` entries). The align task loads either (speech_llm.load_encoder_dir).

Config: ``config.encoder`` (``kind`` + the encoder config's fields; the CTC class count,
``vocab_size`` / ``ctc_vocab_size``, 0 = the vocabulary's size),
``config.features`` (FeatureConfig fields) and ``config.ctc`` (``task_config()``);
``full_config(encoder, features)`` assembles a complete trainer config from model sections.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import jiwer
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from audiochat_jax.audio.augment import SpecAugmentConfig, add_noise, sample_snr_db, spec_augment
from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.data.input import InputConfig, SpeechInput
from audiochat_jax.models import conformer, speech_llm, wav2vec2
from audiochat_jax.models.ctc import collapse, ctc_loss, feasible, greedy_ids
from audiochat_jax.parallel import sharding
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.train import metrics, tasks


def task_config() -> ml_collections.ConfigDict:
    """The ``config.ctc`` section."""
    return ml_collections.ConfigDict(dict(
        data_dir=ml_collections.config_dict.placeholder(str),  # TFDS dir, e.g. WORK/speech/mini_speech/1.0.0
        train_split="train",
        eval_splits=("test",),          # one-pass CER/WER evals; () for none
        eval_batches=0,                 # per split, 0 = the whole split
        vocab="english",                # "english", a CharVocab JSON, or a sentencepiece .model
        buckets=(64000, 128000, 256000),  # padded audio lengths in samples (16 kHz)
        max_label_length=256,
        shuffle_buffer=2048,
        spec_augment=ml_collections.ConfigDict(SpecAugmentConfig().to_dict()),  # 0 masks = off
        noise_prob=0.0,                 # share of training utterances that get noise
        noise_snr_db=(5.0, 30.0),       # uniform SNR range for them
        noise_colour="white",
    ))


def full_config(encoder: dict, features: dict) -> ml_collections.ConfigDict:
    """A complete ``ctc`` trainer config around model sections (e.g. configs/conformer_mini.py's;
    ``encoder`` may carry ``kind``, see the module docstring); ``ctc.data_dir``, ``total_steps``
    and ``batch_size`` remain to be set."""
    from audiochat_jax.train import loop

    c = loop.base_config()
    c.task = "ctc"
    c.ctc = task_config()
    c.encoder = ml_collections.ConfigDict(dict(encoder))
    c.features = ml_collections.ConfigDict(dict(features))
    return c


def load_vocab(spec: str) -> tuple[CharVocab, callable]:
    """``(vocab, tokenize)`` for ``config.ctc.vocab``."""
    if spec == "english":
        vocab = CharVocab.english()
        return vocab, vocab.encode
    vocab = CharVocab.load(spec)
    if spec.endswith(".model"):
        from audiochat_jax.text.tokenizer import Tokenizer
        return vocab, Tokenizer(spec).encode
    return vocab, vocab.encode


def _error_counts(refs: list[str], hyps: list[str]) -> np.ndarray:
    """``[char_errors, chars, word_errors, words]`` (jiwer), summable across hosts."""
    if not refs:
        return np.zeros(4)
    c = jiwer.process_characters(refs, hyps)
    w = jiwer.process_words(refs, hyps)
    char_err = c.substitutions + c.deletions + c.insertions
    word_err = w.substitutions + w.deletions + w.insertions
    return np.array([char_err, c.substitutions + c.deletions + c.hits,
                     word_err, w.substitutions + w.deletions + w.hits], np.float64)


@tasks.register("ctc")
def ctc_task(config, mesh) -> tasks.Task:
    cfg = config.ctc
    vocab, tokenize = load_vocab(cfg.vocab)
    encoder_fields = config.encoder.to_dict()
    kind = encoder_fields.pop("kind", "conformer")
    if kind not in speech_llm.ENCODERS:
        raise ValueError(f"config.encoder.kind={kind!r} is not one of {sorted(speech_llm.ENCODERS)}")
    size_field = speech_llm.ENCODERS[kind].vocab_field
    if encoder_fields.get(size_field, 0) == 0:
        encoder_fields[size_field] = vocab.size
    if encoder_fields[size_field] != vocab.size:
        raise ValueError(f"config.encoder.{size_field}={encoder_fields[size_field]} but the vocabulary "
                         f"{cfg.vocab!r} has {vocab.size} classes (blank included); set 0 to use its size")
    enc_cfg = speech_llm.encoder_config(kind, encoder_fields)
    feat_cfg = FeatureConfig.from_dict(config.features.to_dict())
    augment = SpecAugmentConfig.from_dict(cfg.spec_augment.to_dict())
    features_in = speech_llm.input_kind(enc_cfg) == "features"
    if features_in and feat_cfg.n_mels != enc_cfg.n_mels:
        raise ValueError(f"config.features.n_mels={feat_cfg.n_mels} != config.encoder.n_mels={enc_cfg.n_mels}")
    if not features_in and (augment.freq_masks or augment.time_masks):
        raise ValueError(f"config.ctc.spec_augment masks log-mel features, which config.encoder.kind={kind!r} "
                         "does not use: set config.ctc.spec_augment.freq_masks=0 and time_masks=0 (the "
                         "encoder's own time masking is config.encoder.mask_time_prob)")
    model = speech_llm.ctc_model(enc_cfg)
    blank = vocab.blank_id
    n_hosts = jax.process_count()
    if config.batch_size % n_hosts:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by {n_hosts} hosts")

    def input_config(split, train):
        return InputConfig(
            data_dir=cfg.data_dir, split=split, batch_size=config.batch_size // n_hosts,
            buckets=tuple(cfg.buckets), max_label_length=cfg.max_label_length,
            shuffle=train, shuffle_buffer=cfg.shuffle_buffer, seed=config.seed, repeat=train)

    def init(rng):
        return model.init(rng, *speech_llm.example_inputs(enc_cfg))

    def forward(variables, batch, rng, train):
        """-> (per-utterance CTC nll [batch], logits, out_lengths, new model_state)."""
        audio, lengths = batch["audio"], batch["audio_lengths"]
        if train and cfg.noise_prob > 0:
            k_snr, k_noise = jax.random.split(jax.random.fold_in(rng, 1))
            snr = sample_snr_db(k_snr, audio.shape[0], *cfg.noise_snr_db, prob=cfg.noise_prob)
            audio = add_noise(k_noise, audio, lengths, snr, colour=cfg.noise_colour)
        if features_in:
            feats, frame_lengths = log_mel(audio, lengths, feat_cfg,
                                           rng=jax.random.fold_in(rng, 2) if train else None)
            if train:
                feats = spec_augment(jax.random.fold_in(rng, 3), feats, frame_lengths, augment)
        else:  # waveform encoder: its time masking draws from the dropout rng
            feats, frame_lengths = audio, lengths
        # Only collections the model updates in training (conformer batch norm); none = False.
        mutable = ([k for k in variables if k != "params"] if train else []) or False
        out = model.apply(variables, feats, frame_lengths, train=train, mutable=mutable,
                          rngs={"dropout": jax.random.fold_in(rng, 4)} if train else None)
        (logits, out_lengths), new_state = out if mutable else (out, {})
        nll = ctc_loss(logits, out_lengths, batch["labels"], batch["label_lengths"], blank)
        ok = feasible(out_lengths, batch["labels"], batch["label_lengths"])
        return jnp.where(ok, nll, 0.0), ok, logits, out_lengths, new_state

    def loss(variables, frozen, batch, rng):
        nll, ok, logits, out_lengths, new_state = forward(variables, batch, rng, train=True)
        rows = batch["valid"].astype(jnp.float32)
        valid = rows * ok
        labels = jnp.sum(batch["label_lengths"] * valid)
        aux = {"tokens_sum": labels, "utterance_loss": jnp.sum(nll * valid) / jnp.maximum(valid.sum(), 1.0),
               "infeasible": jnp.sum(rows * (1.0 - ok))}
        if new_state:
            aux["model_state"] = new_state
        return jnp.sum(nll * valid) / jnp.maximum(labels, 1.0), aux

    @jax.jit
    def eval_step(variables, batch):
        nll, ok, logits, out_lengths, _ = forward(variables, batch, jax.random.PRNGKey(0), train=False)
        return nll, ok, greedy_ids(logits), out_lengths

    def host_rows(x):
        return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, sharding.batch_spec(1)))

    def evaluate(variables, frozen):
        out = {}
        for split in cfg.eval_splits:
            data = SpeechInput(input_config(split, train=False), tokenize=tokenize)
            nll_sum, n_batches, infeasible = 0.0, 0, 0.0
            refs, hyps, labels = [], [], 0.0
            with jax.set_mesh(mesh), sharding.axis_rules():
                for batch in data:
                    nll, ok, ids, lengths = eval_step(variables, tasks.device_batch(batch, mesh))
                    valid = batch["valid"]
                    ok = host_rows(ok) & valid
                    nll_sum += float(np.sum(host_rows(nll)[ok]))
                    labels += float(np.sum(batch["label_lengths"][ok]))
                    infeasible += float(np.sum(valid & ~ok))
                    decoded = collapse(host_rows(ids)[valid], host_rows(lengths)[valid], blank)
                    refs += [str(t) for t in batch["text"][valid]]
                    hyps += [vocab.decode(d) for d in decoded]
                    n_batches += 1
                    if cfg.eval_batches and n_batches >= cfg.eval_batches:
                        break
            counts = _error_counts(refs, hyps)
            totals = np.array([nll_sum, labels, infeasible, *counts])
            if n_hosts > 1:
                totals = multihost_utils.process_allgather(totals).sum(0)
            nll_sum, labels, infeasible, char_err, chars, word_err, words = totals
            if not chars:
                raise ValueError(f"{cfg.data_dir}[{split}]: no eval utterance fits config.ctc.buckets="
                                 f"{tuple(cfg.buckets)} and max_label_length={cfg.max_label_length} "
                                 f"({dict(data.stats)})")
            out[f"{split}/loss"] = nll_sum / max(labels, 1.0)
            out[f"{split}/cer"] = char_err / max(chars, 1.0)
            out[f"{split}/wer"] = word_err / max(words, 1.0)
            out[f"{split}/infeasible"] = infeasible
            if refs:
                metrics.log(f"  {split} e.g. ref: {refs[0]!r}\n  {split} e.g. hyp: {hyps[0]!r}")
        return out

    def export(variables, out_dir):
        save = conformer.save if kind == "conformer" else wav2vec2.save
        save(out_dir, enc_cfg, variables, features=feat_cfg.to_dict(), vocab=vocab.to_dict())

    def uncounted_flops(batch):
        """A scanned conformer's blocks past the first, forward + backward (XLA counts a scanned
        body once; conformer.scanned_flops_uncounted)."""
        if kind != "conformer" or not enc_cfg.scan_layers:
            return 0.0
        feats = jax.eval_shape(lambda a, n: log_mel(a, n, feat_cfg)[0], batch["audio"], batch["audio_lengths"])
        frames = int(conformer.subsampled_lengths(np.array([feats.shape[1]]), enc_cfg)[0])
        return conformer.scanned_flops_uncounted(enc_cfg, frames, batch["audio"].shape[0], backward=True)

    return tasks.Task(
        init=init, loss=loss, evaluate=evaluate if cfg.eval_splits else None, export=export,
        uncounted_flops=uncounted_flops,
        train_data=lambda: SpeechInput(input_config(cfg.train_split, train=True), tokenize=tokenize))
