"""``align``: modal-invariance training — the frozen LLM, prompted with audio, must reproduce
the answer it gave to the transcript.

Per utterance (data/input.py joins the precomputed response by id): audio -> log-mel ->
conformer (or audio -> wav2vec2, models/speech_llm.py ``ENCODERS``) -> projector ->
``[chat prefix | audio embeddings | chat suffix | response]`` (models/speech_llm.py) -> the
frozen Llama; losses on the response positions only:

* ``ce_weight``  cross-entropy on the response tokens (the paper's objective);
* ``kl_weight``  KL(teacher || student) at ``kl_temperature`` (x T^2, Hinton), the teacher
  being the same frozen LLM prompted with the *transcript* on the identical template,
  computed in the same step (Ultravox / DiVA style);
* ``ctc_weight`` auxiliary CTC on the encoder's CTC head (keeps the encoder a recogniser, so
  the cascade survives alignment: in the mini world CER 1-3% after alignment with it,
  31-41% without);
* ``embed_weight`` a length-agnostic pull of the audio embeddings toward the transcript's
  token embeddings: symmetric Chamfer distance in cosine (each audio embedding to its
  nearest transcript token, each token to its nearest audio embedding).

What is trained (``trainable``): ``"all"`` (encoder + CTC head + projector; encoder in train
mode: dropout, batch-norm statistics), ``"projector"``, or ``"top:N"`` (projector + the top
N encoder blocks, ``layers_{i}`` of the conformer or wav2vec2). Frozen encoder parts get
``stop_gradient`` in the loss (no backward through them) and ``Task.frozen_patterns`` (no
optimizer update, no Adam moments, no decay); the encoder then runs in eval mode. A
conformer with ``scan_layers`` runs the backward pass through all its blocks under ``top:N``
(one scanned body serves every block), only the frozen ones' updates are dropped. The LLM
is never in the trained tree: it is ``Task.frozen``, a sharded input of the step
(train/state.py).

Config (``config.align``, see ``align_configs.task_config``): llm_dir (kind "llama" model directory),
encoder_dir (kind "conformer_ctc" or "wav2vec2": speech_llm.load_encoder_dir), tokenizer
("" = the LLM directory's), data_dir (TFDS speech dataset), responses (comma-separated
responses dirs / .jsonl files, joined by id), train_split, eval_splits, eval_batches,
system + instruction (the default prompt: for targets without their own, and the exported
model's chat prompt; checked against a pool-less responses run's provenance.json),
families ("" = every family in the responses) and heldout_families (dropped, counted and
logged: never trained with audio, so the report can test them zero-shot; both
comma-separated, recorded in the export), family_weights ("respond=2,repeat=1": how often
each family's target is drawn for an utterance that has several; unlisted = 1), buckets, max_label_length (transcript tokens),
max_response_length, max_prefix_length / max_suffix_length (each target's prompt tokens
before / after the audio),
ctc_max_label_length, shuffle_buffer, projector (stack, kind, hidden_dim, norm, dtype,
param_dtype), trainable, ce_weight, kl_weight, kl_temperature,
ctc_weight, embed_weight, llm_dtype / llm_remat_policy / llm_attention_impl / encoder_dtype
("" = as saved), llm_scan_layers ("" = as saved; "true" / "false": run the LLM's layers
scanned or unrolled, its saved layout converted once on load, data/llm_on_mesh.load_llm).

Metrics: loss, ce, kl, ctc, embed, accuracy (response-token argmax), tokens_sum (response
tokens: tokens/s). MFU uses the matmul FLOPs of each compiled step (``flop_count.matmul_flops``)
plus, for a scanned LLM or conformer, the layers that count sees once (``uncounted_flops``:
``llama.scanned_flops_uncounted``, ``conformer.scanned_flops_uncounted``).
Eval per split: ``{split}/audio_loss|audio_ppl|audio_accuracy`` and the text-prompted
``{split}/text_loss|text_ppl|text_accuracy``; the first eval split is compared with the
train split (same number of batches): ``gap/audio_loss`` (held-out - train) and
``gap/audio_accuracy`` (train - held-out) — the memorisation the design notes warn about.
Export: a ``speech_llm`` model directory (trainable variables + SpeechLLMConfig + paths of the
LLM and tokenizer).
"""
from __future__ import annotations

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.data.input import InputConfig, SpeechInput, load_responses
from audiochat_jax.models import speech_llm
from audiochat_jax.models.ctc import ctc_loss, feasible
from audiochat_jax.models import conformer, llama
from audiochat_jax.models.llama import compute_dtype
from audiochat_jax.models.projector import ProjectorConfig
from audiochat_jax.parallel import sharding
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.text.chat_template import audio_prompt_parts
from audiochat_jax.text.tokenizer import Tokenizer
from audiochat_jax.train import metrics, tasks


# ---------------------------------------------------------------------------------------
# Trainable masks
# ---------------------------------------------------------------------------------------
def frozen_patterns(trainable: str, n_encoder_layers: int) -> tuple[str, ...]:
    """Regexes (over ``jax.tree_util.keystr`` paths of the embedder's params) of what stays fixed."""
    if trainable == "all":
        return ()
    if trainable == "projector":
        return (r"^\['encoder'\]", r"^\['ctc_head'\]")
    m = re.fullmatch(r"top:(\d+)", trainable)
    if not m or not 0 <= int(m.group(1)) <= n_encoder_layers:
        raise ValueError(f"config.align.trainable={trainable!r}: use 'all', 'projector' or 'top:N' "
                         f"with 0 <= N <= {n_encoder_layers} (the encoder's layers)")
    top = range(n_encoder_layers - int(m.group(1)), n_encoder_layers)
    keep = "|".join(f"layers_{i}" for i in top) or "(?!)"
    return (rf"^\['encoder'\]\[(?!'(?:{keep})'\])", r"^\['ctc_head'\]")


def stop_frozen_gradients(params, patterns):
    """``stop_gradient`` on every leaf whose path matches: no backward pass through it."""
    regexes = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.lax.stop_gradient(x)
        if any(r.search(jax.tree_util.keystr(path)) for r in regexes) else x, params)


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def response_ce(logits, targets, weights):
    """-> (ce sum, correct sum, token count) over ``weights`` (float32 [b, R])."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return jnp.sum(ce * weights), jnp.sum(correct * weights), jnp.sum(weights)


def distill_kl(student_logits, teacher_logits, weights, temperature: float):
    """Sum over weighted positions of ``T^2 * KL(softmax(t/T) || softmax(s/T))``."""
    t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    return temperature ** 2 * jnp.sum(kl * weights)


def chamfer_cosine(a, a_lengths, b, b_lengths):
    """Per-row symmetric Chamfer distance in cosine, [batch]; length-agnostic.

    a [batch, n, d] (audio embeddings), b [batch, m, d] (token embeddings); mean over a's
    valid rows of (1 - max cos to b) plus the same from b to a.
    """
    unit = lambda x: x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)
    cos = jnp.einsum("bnd,bmd->bnm", unit(a.astype(jnp.float32)), unit(b.astype(jnp.float32)))
    va = jnp.arange(a.shape[1])[None, :] < a_lengths[:, None]
    vb = jnp.arange(b.shape[1])[None, :] < b_lengths[:, None]
    cos = jnp.where(va[:, :, None] & vb[:, None, :], cos, -2.0)
    a_to_b = jnp.sum((1 - cos.max(2)) * va, 1) / jnp.maximum(va.sum(1), 1)
    b_to_a = jnp.sum((1 - cos.max(1)) * vb, 1) / jnp.maximum(vb.sum(1), 1)
    return a_to_b + b_to_a


class _WithCTCLabels:
    """Adds char-level CTC targets from ``batch["text"]`` (the LLM tokens are in "labels")."""

    def __init__(self, inner, vocab: CharVocab, max_length: int):
        self.inner, self.vocab, self.max_length = inner, vocab, max_length
        self.too_long = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.inner))
        n = len(batch["text"])
        labels = np.zeros((n, self.max_length), np.int32)
        lengths = np.zeros((n,), np.int32)
        for i, text in enumerate(batch["text"]):
            ids = self.vocab.encode(text.decode() if isinstance(text, bytes) else str(text))
            if len(ids) > self.max_length:  # kept for the main loss, weight 0 for CTC
                self.too_long += 1
                continue
            labels[i, :len(ids)], lengths[i] = ids, len(ids)
        batch["ctc_labels"], batch["ctc_label_lengths"] = labels, lengths
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def _load_response_tables(spec: str) -> dict:
    """``{id: [Target]}`` of every responses directory / .jsonl in ``spec`` (comma-separated)."""
    from audiochat_jax.data import responses as responses_lib
    table = {}
    for path in filter(None, (p.strip() for p in spec.split(","))):
        table.update(load_responses(path) if path.endswith(".jsonl") else responses_lib.load_responses(path))
    if not table:
        raise ValueError(f"config.align.responses={spec!r}: no responses; point it at the output "
                         "directory of `python -m audiochat_jax.responses` (or a responses.jsonl)")
    return table


def select_targets(table: dict, prefix, suffix, families=(), heldout=()) -> tuple[dict, dict]:
    """The targets alignment trains on -> (``{id: [Target]}``, counts per family: kept and dropped).

    Targets without their own prompt (a responses run without an instruction pool, or a
    plain .jsonl) get the default ``prefix`` / ``suffix``. ``families`` keeps only those
    (empty: all); ``heldout`` families are always dropped, so they never reach a train step
    (the report tests them zero-shot). Ids left with no target are left out (the input
    pipeline counts them as ``no_response``).
    """
    present = {t.family for ts in table.values() for t in ts}
    unknown = sorted(set(families) - present)
    if unknown:
        raise ValueError(f"config.align.families={list(families)}: {unknown} not among the responses' "
                         f"families {sorted(present)}")
    out, counts = {}, {}
    for uid, targets in table.items():
        keep = []
        for t in targets:
            use = t.family not in heldout and (not families or t.family in families)
            name = t.family if use else f"{t.family} (dropped)"
            counts[name] = counts.get(name, 0) + 1
            if use:
                keep.append(t if t.prefix is not None else t._replace(prefix=tuple(prefix), suffix=tuple(suffix)))
        if keep:
            out[uid] = keep
    if not out:
        raise ValueError(f"config.align: no target left after families={list(families)} and "
                         f"heldout_families={list(heldout)} (present: {sorted(present)})")
    return out, dict(sorted(counts.items()))


def _check_prompt_matches_responses(spec: str, prefix, suffix) -> None:
    """Targets without their own prompt must have been answered in the default prompt."""
    import json
    for path in filter(None, (p.strip() for p in spec.split(","))):
        prov = os.path.join(path, "provenance.json")
        if path.endswith(".jsonl") or not os.path.exists(prov):
            continue
        with open(prov) as f:
            prompt = json.load(f).get("prompt", {})
        if prompt.get("instructions"):
            continue  # an instruction pool: every record carries its own prompt
        if "audio_prefix_ids" in prompt and (list(prompt["audio_prefix_ids"]) != list(prefix)
                                             or list(prompt["audio_suffix_ids"]) != list(suffix)):
            raise ValueError(f"{prov}: the responses were generated with system={prompt.get('system')!r}, "
                             f"instruction={prompt.get('instruction')!r}; set config.align.system and "
                             "config.align.instruction to the same values")


# ---------------------------------------------------------------------------------------
# The step's forward pass and loss (shared with plan.py's abstract step)
# ---------------------------------------------------------------------------------------
def make_forward(cfg, llm_cfg, embedder, feat_cfg, blank_id: int, patterns):
    """``forward(variables, llm, batch, rng, train) -> (sums, new_model_state)``.

    cfg is ``config.align``; ``patterns`` the frozen-parameter regexes (:func:`frozen_patterns`).
    The batch holds audio [b, samples] f32, audio_lengths [b], each row's prompt around the
    content (prefix_ids [b, P] + prefix_lengths, suffix_ids [b, S] + suffix_lengths: the
    instruction its target was answered in), response_ids [b, R], response_lengths, labels
    [b, Lt] (transcript tokens), label_lengths, valid [b] (and ctc_labels/ctc_label_lengths
    with ctc_weight). The text-prompted teacher gets the same prompt with the transcript
    tokens where the audio goes.
    ``sums`` are per-batch sums: ce, correct, tokens (+ kl, ctc/ctc_labels, embed/rows when
    training with those losses; text_ce/text_correct, the text-prompted teacher, in eval).
    """
    encoder_train = cfg.trainable == "all"

    def forward(variables, llm, batch, rng, train):
        """-> (dict of per-batch sums, new model_state)."""
        params = stop_frozen_gradients(variables["params"], patterns)
        variables = {**variables, "params": params}
        enc_train = train and encoder_train
        mutable = [k for k in variables if k != "params"] if enc_train else False
        out = speech_llm.embed_audio(embedder, variables, feat_cfg, batch["audio"], batch["audio_lengths"],
                                     train=enc_train, mutable=mutable,
                                     rngs={"dropout": jax.random.fold_in(rng, 1)} if enc_train else None)
        out, new_state = out if mutable else (out, {})
        audio = out["embeddings"].astype(compute_dtype(llm_cfg.dtype))
        R = batch["response_ids"].shape[1]
        valid = batch["valid"].astype(jnp.float32)
        weights = (jnp.arange(R)[None, :] < batch["response_lengths"][:, None]) * valid[:, None]
        targets = batch["response_ids"]
        around = dict(prefix_lengths=batch["prefix_lengths"], suffix_lengths=batch["suffix_lengths"])
        prefix, suffix = batch["prefix_ids"], batch["suffix_ids"]
        prompt = speech_llm.build_prompt(llm_cfg, llm, prefix, suffix, audio, out["lengths"],
                                         targets, batch["response_lengths"], **around)
        logits = speech_llm.response_logits(llm_cfg, llm, prompt, R)
        ce, correct, tokens = response_ce(logits, targets, weights)
        sums = {"ce": ce, "correct": correct, "tokens": tokens}
        if cfg.kl_weight > 0 or not train:
            text = speech_llm.build_prompt(llm_cfg, llm, prefix, suffix, batch["labels"], batch["label_lengths"],
                                           targets, batch["response_lengths"], **around)
            teacher = jax.lax.stop_gradient(speech_llm.response_logits(llm_cfg, llm, text, R))
            if cfg.kl_weight > 0:
                sums["kl"] = distill_kl(logits, teacher, weights, cfg.kl_temperature)
            if not train:
                sums["text_ce"], sums["text_correct"], _ = response_ce(teacher, targets, weights)
        if cfg.ctc_weight > 0 and train:
            # Rows whose transcript cannot fit their frames (no alignment) get weight 0.
            has = (batch["ctc_label_lengths"] > 0) * valid * feasible(
                out["frame_lengths"], batch["ctc_labels"], batch["ctc_label_lengths"])
            nll = ctc_loss(out["ctc_logits"], out["frame_lengths"], batch["ctc_labels"],
                           batch["ctc_label_lengths"], blank_id)
            sums["ctc"] = jnp.sum(jnp.where(has > 0, nll, 0.0))
            sums["ctc_labels"] = jnp.sum(batch["ctc_label_lengths"] * has)
        if cfg.embed_weight > 0 and train:
            tok = speech_llm.embed_tokens(llm_cfg, llm, batch["labels"])
            sums["embed"] = jnp.sum(chamfer_cosine(out["embeddings"], out["lengths"], tok,
                                                   batch["label_lengths"]) * valid)
            sums["rows"] = jnp.sum(valid)
        return sums, new_state

    return forward


def make_uncounted_flops(cfg, llm_cfg, embedder, feat_cfg, init):
    """``uncounted_flops(batch) -> float`` (tasks.Task): the global-batch FLOPs that XLA's cost
    analysis misses because it counts a while loop's body once: the frozen LLM's layers when
    scanned (llama.scanned_flops_uncounted) and the conformer's blocks when scanned
    (conformer.scanned_flops_uncounted). 0 when both are unrolled. Shapes only: ``batch``
    may hold ``jax.ShapeDtypeStruct``s (plan.py) or arrays (the trainer's MFU)."""
    enc_cfg = embedder.encoder
    enc_scanned = isinstance(enc_cfg, conformer.ConformerConfig) and enc_cfg.scan_layers
    # A scanned encoder is differentiated through all its blocks as soon as one is trainable.
    enc_backward = cfg.trainable not in ("projector", "top:0")

    def uncounted_flops(batch):
        if not (llm_cfg.scan_layers or enc_scanned):
            return 0.0
        rows, n_response = batch["response_ids"].shape
        n_prefix, n_suffix = batch["prefix_ids"].shape[1], batch["suffix_ids"].shape[1]
        missed = 0.0
        if enc_scanned:
            feats = jax.eval_shape(lambda a, n: log_mel(a, n, feat_cfg)[0], batch["audio"], batch["audio_lengths"])
            frames = int(conformer.subsampled_lengths(np.array([feats.shape[1]]), enc_cfg)[0])
            missed += conformer.scanned_flops_uncounted(enc_cfg, frames, rows, enc_backward)
        if not llm_cfg.scan_layers:
            return missed
        variables = jax.eval_shape(init, jax.random.key(0))
        variables = jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, variables,
                                 is_leaf=lambda x: isinstance(x, nn.Partitioned))
        audio = jax.eval_shape(lambda v, a, n: speech_llm.embed_audio(embedder, v, feat_cfg, a, n),
                               variables, batch["audio"], batch["audio_lengths"])["embeddings"]
        remat = llm_cfg.remat_policy == "full"
        # The audio-prompted pass: forward + activation gradients (+ the remat recompute).
        missed += llama.scanned_flops_uncounted(llm_cfg, n_prefix + audio.shape[1] + n_suffix + n_response,
                                                rows, 2 + remat)
        if cfg.kl_weight > 0:  # the text-prompted teacher: forward only
            missed += llama.scanned_flops_uncounted(
                llm_cfg, n_prefix + batch["labels"].shape[1] + n_suffix + n_response, rows, 1)
        return missed

    return uncounted_flops


def make_loss(cfg, forward):
    """The training loss ``(variables, frozen_llm, batch, rng) -> (loss, aux)`` (tasks.Task.loss)."""

    def loss(variables, frozen, batch, rng):
        sums, new_state = forward(variables, frozen, batch, rng, train=True)
        n = jnp.maximum(sums["tokens"], 1.0)
        aux = {"ce": sums["ce"] / n, "accuracy": sums["correct"] / n, "tokens_sum": sums["tokens"]}
        total = cfg.ce_weight * aux["ce"]
        if "kl" in sums:
            aux["kl"] = sums["kl"] / n
            total = total + cfg.kl_weight * aux["kl"]
        if "ctc" in sums:
            aux["ctc"] = sums["ctc"] / jnp.maximum(sums["ctc_labels"], 1.0)
            total = total + cfg.ctc_weight * aux["ctc"]
        if "embed" in sums:
            aux["embed"] = sums["embed"] / jnp.maximum(sums["rows"], 1.0)
            total = total + cfg.embed_weight * aux["embed"]
        if new_state:
            aux["model_state"] = new_state
        return total, aux

    return loss


# ---------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------
def _tokenizer_path(cfg) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    meta = model_dir.read_model_config(cfg.llm_dir, "llama")
    if not meta.get("tokenizer"):
        raise ValueError(f"{cfg.llm_dir}/config.json names no tokenizer; set config.align.tokenizer "
                         "to the LLM's sentencepiece .model")
    return os.path.join(cfg.llm_dir, meta["tokenizer"])


def _graft(boxed: dict, pretrained: dict, where: str) -> dict:
    """``boxed`` (init's variables, nn.Partitioned leaves) with the pre-trained conformer's
    ``encoder`` / ``ctc_head`` values put in (shapes must match)."""
    out = {k: dict(v) for k, v in boxed.items()}
    is_box = lambda x: isinstance(x, nn.Partitioned)
    for collection, subtree in pretrained.items():
        for name, value in subtree.items():
            if collection not in out or name not in out[collection]:
                continue
            target = out[collection][name]

            def put(path, b, v):
                shape = (b.value if is_box(b) else b).shape
                if tuple(shape) != tuple(np.shape(v)):
                    raise ValueError(f"{where}: {collection}/{name}{jax.tree_util.keystr(path)} has shape "
                                     f"{np.shape(v)}, the align model expects {tuple(shape)}")
                v = jnp.asarray(v, (b.value if is_box(b) else b).dtype)
                return b.replace_boxed(v) if is_box(b) else v

            try:
                out[collection][name] = jax.tree_util.tree_map_with_path(put, target, value, is_leaf=is_box)
            except ValueError as e:
                if "has shape" in str(e):
                    raise
                raise ValueError(f"{where}: {collection}/{name} does not match the align model's "
                                 f"structure ({e})") from e
    return out


def llm_scan_layers(align_config) -> bool | None:
    """``config.align.llm_scan_layers`` as a bool, None for "" (the LLM directory's layout).
    Slice configs link it to ``config.llm.scan_layers`` (as the string "True" / "False")."""
    text = str(align_config.llm_scan_layers).strip().lower()
    if text in ("", "none"):
        return None
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"config.align.llm_scan_layers={align_config.llm_scan_layers!r}: use true "
                     "(one compiled layer in a loop), false (the layers unrolled) or \"\" (as saved)")


def llm_overrides(align_config) -> dict:
    """The LlamaConfig fields the align section sets on the loaded LLM (its non-empty
    llm_dtype / llm_remat_policy / llm_attention_impl)."""
    a = align_config
    return {k: v for k, v in (("dtype", a.llm_dtype), ("remat_policy", a.llm_remat_policy),
                              ("attention_impl", a.llm_attention_impl)) if v}


@tasks.register("align")
def align_task(config, mesh) -> tasks.Task:
    from audiochat_jax.data.responses import load_llm
    cfg = config.align
    n_hosts = jax.process_count()
    if config.batch_size % n_hosts:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by {n_hosts} hosts")

    # --- The frozen LLM, restored straight onto the mesh -------------------------------
    scan_layers = llm_scan_layers(cfg)
    llm_cfg, llm_params = load_llm(cfg.llm_dir, mesh, scan_layers=scan_layers)
    layout = ("scanned" if llm_cfg.scan_layers else "unrolled") + (
        " (config.align.llm_scan_layers)" if scan_layers is not None else " (as saved)")
    llm_cfg = llm_cfg.replace(**llm_overrides(cfg))
    tokenizer = Tokenizer(_tokenizer_path(cfg))
    prefix, suffix = audio_prompt_parts(tokenizer, system=cfg.system or None, instruction=cfg.instruction)
    _check_prompt_matches_responses(cfg.responses, prefix, suffix)
    prefix, suffix = np.asarray(prefix, np.int32), np.asarray(suffix, np.int32)

    # --- The trainable embedder: pre-trained conformer (+ CTC head) + new projector ----
    enc_cfg, enc_vars, enc_meta = speech_llm.load_encoder_dir(cfg.encoder_dir)
    if cfg.encoder_dtype:
        enc_cfg = type(enc_cfg).from_dict({**enc_cfg.to_dict(), "dtype": cfg.encoder_dtype})
    feat_cfg = FeatureConfig.from_dict(enc_meta["features"])
    vocab = CharVocab.from_dict(enc_meta["vocab"])
    proj_cfg = ProjectorConfig.from_dict(dict(cfg.projector.to_dict(), in_dim=speech_llm.encoder_width(enc_cfg),
                                              out_dim=llm_cfg.dim))
    use_ctc = cfg.ctc_weight > 0 or "ctc_head" in enc_vars["params"]
    embedder = speech_llm.AudioEmbedder(enc_cfg, proj_cfg, ctc_head=use_ctc)
    patterns = frozen_patterns(cfg.trainable, speech_llm.encoder_layers(enc_cfg))
    if use_ctc and cfg.ctc_weight == 0 and r"^\['ctc_head'\]" not in patterns:
        # No CTC loss: the head keeps its pre-trained weights (the cascade's recogniser) and
        # gets no Adam moments.
        patterns += (r"^\['ctc_head'\]",)
    if cfg.ctc_weight > 0 and vocab.kind != "chars":
        raise ValueError(f"config.align.ctc_weight>0 needs a character CTC vocabulary; {cfg.encoder_dir} "
                         f"has kind {vocab.kind!r}")
    for name in ("ce_weight", "kl_weight", "ctc_weight", "embed_weight"):
        if cfg[name] < 0:
            raise ValueError(f"config.align.{name}={cfg[name]} must be >= 0")
    if cfg.kl_weight > 0 and cfg.kl_temperature <= 0:
        raise ValueError(f"config.align.kl_temperature={cfg.kl_temperature} must be > 0")
    metrics.log(f"align: prompt prefix {len(prefix)} + audio + suffix {len(suffix)} tokens; "
                f"trainable={cfg.trainable!r}; LLM {llm_cfg.dim}x{llm_cfg.n_layers} frozen, layers {layout}")

    def init(rng):
        boxed = embedder.init(rng, *speech_llm.example_inputs(enc_cfg))
        return _graft(dict(boxed), enc_vars, cfg.encoder_dir)

    forward = make_forward(cfg, llm_cfg, embedder, feat_cfg, vocab.blank_id, patterns)
    loss = make_loss(cfg, forward)

    from audiochat_jax.text.instructions import parse_names
    heldout = parse_names(cfg.heldout_families)
    all_targets = _load_response_tables(cfg.responses)
    response_table, family_counts = select_targets(all_targets, prefix, suffix, parse_names(cfg.families), heldout)
    trained_families = sorted({t.family for ts in response_table.values() for t in ts})
    metrics.log(f"align: targets per family {family_counts}")

    def input_config(split, train):
        return InputConfig(
            data_dir=cfg.data_dir, split=split, batch_size=config.batch_size // n_hosts,
            buckets=tuple(cfg.buckets), max_label_length=cfg.max_label_length,
            max_response_length=cfg.max_response_length, max_prefix_length=cfg.max_prefix_length,
            max_suffix_length=cfg.max_suffix_length, family_weights=cfg.family_weights, shuffle=train,
            shuffle_buffer=cfg.shuffle_buffer, seed=config.seed, repeat=train)

    def train_data():
        data = SpeechInput(input_config(cfg.train_split, True), tokenize=tokenizer.encode,
                           responses=response_table)
        return _WithCTCLabels(data, vocab, cfg.ctc_max_label_length) if cfg.ctc_weight > 0 else data

    eval_step = jax.jit(lambda variables, llm, batch: forward(variables, llm, batch,
                                                              jax.random.PRNGKey(0), train=False)[0])

    def eval_split(variables, llm, split, max_batches):
        keys = ("ce", "correct", "tokens", "text_ce", "text_correct")
        totals = dict.fromkeys(keys, 0.0)
        data = SpeechInput(input_config(split, False), tokenize=tokenizer.encode, responses=response_table)
        with jax.set_mesh(mesh), sharding.axis_rules():
            for n, batch in enumerate(data):
                if max_batches and n >= max_batches:
                    break
                sums = eval_step(variables, llm, tasks.device_batch(batch, mesh))
                for k in keys:
                    totals[k] += float(sums[k])
        data.close()
        if not totals["tokens"]:
            raise ValueError(f"{cfg.data_dir}[{split}]: no eval utterance with a response fits "
                             f"config.align.buckets / max_label_length / max_response_length ({dict(data.stats)})")
        t = totals["tokens"]
        out = {"audio_loss": totals["ce"] / t, "audio_accuracy": totals["correct"] / t,
               "text_loss": totals["text_ce"] / t, "text_accuracy": totals["text_correct"] / t}
        out["audio_ppl"], out["text_ppl"] = float(np.exp(out["audio_loss"])), float(np.exp(out["text_loss"]))
        return out

    def evaluate(variables, frozen):
        out = {}
        for split in cfg.eval_splits:
            out.update({f"{split}/{k}": v for k, v in eval_split(variables, frozen, split, cfg.eval_batches).items()})
        if cfg.eval_splits:
            held = cfg.eval_splits[0]
            train = eval_split(variables, frozen, cfg.train_split, cfg.eval_batches)
            out.update({f"{cfg.train_split}/{k}": v for k, v in train.items()})
            out["gap/audio_loss"] = out[f"{held}/audio_loss"] - train["audio_loss"]
            out["gap/audio_accuracy"] = train["audio_accuracy"] - out[f"{held}/audio_accuracy"]
        return out

    def export(variables, out_dir):
        spec = speech_llm.SpeechLLMConfig(
            encoder=enc_cfg.to_dict(), projector=proj_cfg.to_dict(), features=feat_cfg.to_dict(),
            llm=llm_cfg.to_dict(), ctc_head=use_ctc, prefix_ids=tuple(prefix.tolist()),
            suffix_ids=tuple(suffix.tolist()), encoder_kind=speech_llm.encoder_kind(enc_cfg))
        model_dir.save_model_dir(out_dir, speech_llm.KIND, spec.to_dict(), dict(variables),
                                 llm_dir=os.path.abspath(cfg.llm_dir),
                                 tokenizer=os.path.abspath(_tokenizer_path(cfg)),
                                 vocab=vocab.to_dict(), system=cfg.system, instruction=cfg.instruction,
                                 families=trained_families, heldout_families=list(heldout))

    uncounted_flops = make_uncounted_flops(cfg, llm_cfg, embedder, feat_cfg, init)

    return tasks.Task(init=init, loss=loss, train_data=train_data,
                      evaluate=evaluate if cfg.eval_splits else None, export=export,
                      frozen=llm_params, frozen_patterns=patterns, uncounted_flops=uncounted_flops)
