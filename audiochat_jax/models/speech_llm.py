"""The speech LLM: audio -> encoder -> projector -> spliced into a chat prompt -> frozen Llama.

    audio [b, samples] --log_mel--> [b, frames, mels] --AudioEmbedder--> [b, A, dim]
    [prefix ids | audio embeddings | suffix ids | response ids] --splice--> [b, L, dim]
    --frozen Llama--> logits at the response positions [b, R, vocab]

Two pieces with separate parameters:

* ``AudioEmbedder`` (trainable): conformer encoder (+ its CTC head, kept for the auxiliary CTC
  loss and the cascade) + projector. Variables ``{"params": {"encoder", "projector",
  ["ctc_head"]}, ["batch_stats": {"encoder"}]}`` — the encoder and head use the names of
  ``ConformerCTC``, so a pre-trained ``conformer_ctc`` model directory drops straight in.
* the Llama params (frozen): passed separately, never mixed into the trainable tree.

``splice`` packs variable-length segments left-aligned: row i holds prefix, its ``a_i`` audio
embeddings, suffix, its ``r_i`` response tokens, then padding (``mask`` False). Positions are
the slot index (``0..len_i-1``), exactly what the text prompt of the same row would get. The
text-prompted sequence is built by the same function with transcript-token embeddings in
place of audio, so the audio and text paths are compared on identical templates.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.models.conformer import ConformerConfig, ConformerEncoder
from audiochat_jax.models.llama import Llama, LlamaConfig
from audiochat_jax.models.projector import Projector, ProjectorConfig

KIND = "speech_llm"


class AudioEmbedder(nn.Module):
    """Log-mel features -> LLM-width audio embeddings (the trainable half of the speech LLM)."""
    encoder: ConformerConfig
    projector: ProjectorConfig
    ctc_head: bool = False      # also return CTC logits (ConformerConfig.vocab_size classes)

    @nn.compact
    def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool = False) -> dict:
        """features [batch, frames, n_mels] f32, lengths [batch] int32 ->
        ``{"embeddings": [batch, A, llm_dim], "lengths": [batch], "frame_lengths": [batch],
        "ctc_logits": [batch, T, vocab] f32 (only with ctc_head)}``."""
        frames, frame_lengths = ConformerEncoder(self.encoder, name="encoder")(features, lengths, train=train)
        out = {"frame_lengths": frame_lengths}
        if self.ctc_head:
            if self.encoder.vocab_size < 2:
                raise ValueError(f"AudioEmbedder: ctc_head needs ConformerConfig.vocab_size >= 2 "
                                 f"(got {self.encoder.vocab_size}); take it from the CTC model's vocabulary")
            dt = dict(dtype=jnp.dtype(self.encoder.dtype), param_dtype=jnp.dtype(self.encoder.param_dtype))
            out["ctc_logits"] = nn.Dense(
                self.encoder.vocab_size, name="ctc_head",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "ctc_vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("ctc_vocab",)),
                **dt)(frames).astype(jnp.float32)
        out["embeddings"], out["lengths"] = Projector(self.projector, name="projector")(frames, frame_lengths)
        return out


def embed_audio(embedder: AudioEmbedder, variables: dict, feature_config: FeatureConfig,
                audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
                rngs: dict | None = None, mutable=False):
    """Waveforms [batch, samples] f32 at 16 kHz, lengths [batch] -> the embedder's dict
    (and the updated collections when ``mutable``)."""
    feats, feat_lengths = log_mel(audio, audio_lengths, feature_config)
    return embedder.apply(variables, feats, feat_lengths, train=train, rngs=rngs, mutable=mutable)


class Spliced(NamedTuple):
    """A packed prompt batch: embeddings [b, L, dim], mask [b, L] bool, positions [b, L] int32,
    starts [b, n_segments] int32 (slot where each segment begins in each row), lengths [b]."""
    embeddings: jax.Array
    mask: jax.Array
    positions: jax.Array
    starts: jax.Array
    lengths: jax.Array


def splice(segments: Sequence[tuple[jax.Array, jax.Array]]) -> Spliced:
    """Packs segments ``(emb [b or 1, n_k, d], lengths [b] or None)`` left-aligned per row.

    Row i is ``seg_0[:len_0] ++ seg_1[:len_1] ++ ...`` then zeros; ``L = sum n_k``. A segment
    with a leading 1 (e.g. the shared chat prefix) is broadcast; ``lengths=None`` means all
    ``n_k`` entries are real. Gradients flow into every segment's embeddings.
    """
    batch = max(e.shape[0] for e, _ in segments)
    dtype = jnp.result_type(*[e.dtype for e, _ in segments])
    embs, lens = [], []
    for e, n in segments:
        embs.append(jnp.broadcast_to(e, (batch,) + e.shape[1:]).astype(dtype))
        lens.append(jnp.full((batch,), e.shape[1], jnp.int32) if n is None
                    else jnp.minimum(n.astype(jnp.int32), e.shape[1]))
    widths = [e.shape[1] for e in embs]
    concat = jnp.concatenate(embs, axis=1)                                    # [b, L, d]
    lens = jnp.stack(lens, axis=1)                                            # [b, K]
    starts = jnp.cumsum(lens, axis=1) - lens                                  # [b, K]
    offsets = jnp.cumsum(jnp.array([0] + widths[:-1], jnp.int32))             # [K]
    total = lens.sum(axis=1)                                                  # [b]
    slots = jnp.arange(concat.shape[1], dtype=jnp.int32)
    # Segment of each slot: the last one starting at or before it (empty segments share
    # their start with the next one, which is then correctly chosen).
    seg = jnp.sum(slots[None, :, None] >= starts[:, None, :], axis=-1) - 1   # [b, L]
    src = offsets[seg] + slots[None, :] - jnp.take_along_axis(starts, seg, axis=1)
    mask = slots[None, :] < total[:, None]
    src = jnp.where(mask, src, 0)
    x = jnp.take_along_axis(concat, src[..., None], axis=1)
    x = jnp.where(mask[..., None], x, 0).astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    positions = jnp.broadcast_to(slots, mask.shape)
    return Spliced(x, mask, positions, starts, total)


def embed_tokens(llm_config: LlamaConfig, llm_params, ids: jax.Array) -> jax.Array:
    """Token ids [..., n] -> the LLM's input embeddings [..., n, dim] (compute dtype)."""
    ids = jnp.asarray(ids, jnp.int32)
    flat = ids.reshape((-1, ids.shape[-1]))
    out = Llama(llm_config).apply({"params": llm_params}, flat, method=Llama.embed)
    return out.reshape(ids.shape + (llm_config.dim,))


def build_prompt(llm_config: LlamaConfig, llm_params, prefix_ids, suffix_ids, content: jax.Array,
                 content_lengths: jax.Array, response_ids: jax.Array | None = None,
                 response_lengths: jax.Array | None = None) -> Spliced:
    """``[prefix | content | suffix | response]`` packed per row.

    prefix_ids [P], suffix_ids [S] int (shared by the batch); content either audio embeddings
    [b, A, dim] or transcript token ids [b, A] int (the text-prompted twin); response_ids
    [b, R] (teacher forcing; None for a generation prompt). Segment starts: ``starts[:, 1]``
    is the content, ``starts[:, 3]`` the response.
    """
    if not jnp.issubdtype(content.dtype, jnp.floating):
        content = embed_tokens(llm_config, llm_params, content)
    segs = [(embed_tokens(llm_config, llm_params, jnp.asarray(prefix_ids, jnp.int32))[None], None),
            (content, content_lengths),
            (embed_tokens(llm_config, llm_params, jnp.asarray(suffix_ids, jnp.int32))[None], None)]
    if response_ids is not None:
        segs.append((embed_tokens(llm_config, llm_params, response_ids), response_lengths))
    return splice(segs)


def response_logits(llm_config: LlamaConfig, llm_params, prompt: Spliced, n_response: int) -> jax.Array:
    """Logits predicting each response token: [b, n_response, vocab] float32.

    Response token j of row i is predicted at slot ``starts[i, -1] + j - 1``; only those
    slots go through the LM head (the vocab projection of prefix and audio slots is skipped).
    """
    model = Llama(llm_config)
    hidden = model.apply({"params": llm_params}, embeddings=prompt.embeddings, positions=prompt.positions,
                         mask=prompt.mask, method=Llama.hidden_states)
    slots = jnp.maximum(prompt.starts[:, -1:] + jnp.arange(n_response)[None, :] - 1, 0)
    hidden = jnp.take_along_axis(hidden, slots[..., None], axis=1)           # [b, R, dim]
    return model.apply({"params": llm_params}, hidden, method=Llama.logits)


@dataclasses.dataclass(frozen=True)
class SpeechLLMConfig:
    """What an exported speech-LLM directory records (config.json of kind ``speech_llm``)."""
    encoder: dict              # ConformerConfig fields
    projector: dict            # ProjectorConfig fields
    features: dict             # FeatureConfig fields
    llm: dict                  # LlamaConfig fields of the frozen LLM
    ctc_head: bool = False
    prefix_ids: tuple = ()     # chat-template tokens before the audio
    suffix_ids: tuple = ()     # ... and after it

    def embedder(self) -> AudioEmbedder:
        return AudioEmbedder(ConformerConfig.from_dict(self.encoder), ProjectorConfig.from_dict(self.projector),
                             ctc_head=self.ctc_head)

    @classmethod
    def from_dict(cls, d: dict) -> "SpeechLLMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SpeechLLMConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("prefix_ids", "suffix_ids"):
            d[k] = tuple(int(t) for t in d.get(k, ()))
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prefix_ids"], d["suffix_ids"] = list(self.prefix_ids), list(self.suffix_ids)
        return d
