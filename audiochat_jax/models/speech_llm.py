"""The speech LLM: audio -> encoder -> projector -> spliced into a chat prompt -> frozen Llama.

    audio [b, samples] --log_mel (conformer only)--> [b, frames, mels] --AudioEmbedder--> [b, A, dim]
    [prefix ids | audio embeddings | suffix ids | response ids] --splice--> [b, L, dim]
    --frozen Llama--> logits at the response positions [b, R, vocab]

Two pieces with separate parameters:

* ``AudioEmbedder`` (trainable): speech encoder (+ its CTC head, kept for the auxiliary CTC
  loss and the cascade) + projector. Variables ``{"params": {"encoder", "projector",
  ["ctc_head"]}, ["batch_stats": {"encoder"}]}`` — the encoder and head use the names of
  ``ConformerCTC``, so a pre-trained ``conformer_ctc`` model directory drops straight in
  (``load_encoder_dir``; a ``wav2vec2`` directory's ``lm_head`` becomes ``ctc_head``).
* the Llama params (frozen): passed separately, never mixed into the trainable tree.

Two encoders (``ENCODERS``, picked by the type of ``AudioEmbedder.encoder``, recorded as
``SpeechLLMConfig.encoder_kind``): "conformer" (models/conformer.py, input_kind "features":
``embed_audio`` computes log-mel first) and "wav2vec2" (models/wav2vec2.py, wav2vec 2.0 /
HuBERT, input_kind "waveform": it takes the 16 kHz waveform itself).

``splice`` packs variable-length segments left-aligned: row i holds prefix, its ``a_i`` audio
embeddings, suffix, its ``r_i`` response tokens, then padding (``mask`` False). Positions are
the slot index (``0..len_i-1``), exactly what the text prompt of the same row would get. The
text-prompted sequence is built by the same function with transcript-token embeddings in
place of audio, so the audio and text paths are compared on identical templates.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.models import conformer, wav2vec2
from audiochat_jax.models.conformer import ConformerConfig, ConformerEncoder
from audiochat_jax.models.llama import Llama, LlamaConfig
from audiochat_jax.models.projector import Projector, ProjectorConfig
from audiochat_jax.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.util.config_fields import DictConfig

KIND = "speech_llm"


# ---------------------------------------------------------------------------------------
# The encoders an AudioEmbedder can hold
# ---------------------------------------------------------------------------------------
class EncoderKind(NamedTuple):
    """How one encoder family is named: its config/module classes and field names."""
    config: type            # ConformerConfig | Wav2Vec2Config
    encoder: type           # the flax encoder (class attribute ``input_kind``)
    ctc: type               # encoder + CTC head, what the ``ctc`` task trains
    vocab_field: str        # config field with the CTC class count (blank included)
    width_field: str        # encoder output width
    layers_field: str       # number of blocks named ``layers_{i}`` inside the encoder
    dir_kind: str           # model-directory kind (models/model_dir.py) of a CTC export


ENCODERS = {
    "conformer": EncoderKind(ConformerConfig, ConformerEncoder, conformer.ConformerCTC,
                             "vocab_size", "d_model", "n_layers", conformer.KIND),
    "wav2vec2": EncoderKind(Wav2Vec2Config, Wav2Vec2Encoder, wav2vec2.Wav2Vec2CTC,
                            "ctc_vocab_size", "hidden_size", "num_layers", wav2vec2.KIND),
}
EncoderConfig = Union[ConformerConfig, Wav2Vec2Config]


def encoder_kind(config: EncoderConfig) -> str:
    """"conformer" or "wav2vec2" for an encoder config instance."""
    for name, k in ENCODERS.items():
        if isinstance(config, k.config):
            return name
    raise TypeError(f"not an encoder config: {type(config).__name__}; expected one of "
                    f"{[k.config.__name__ for k in ENCODERS.values()]}")


def encoder_config(kind: str, fields: dict) -> EncoderConfig:
    """The config of encoder ``kind`` ("conformer" | "wav2vec2") from its plain fields."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder kind {kind!r} is not one of {sorted(ENCODERS)}")
    return ENCODERS[kind].config.from_dict(dict(fields))


def _field(config: EncoderConfig, which: str):
    return getattr(config, getattr(ENCODERS[encoder_kind(config)], which))


def encoder_width(config: EncoderConfig) -> int:
    """Width of the encoder's output frames (the projector's ``in_dim``)."""
    return _field(config, "width_field")


def encoder_layers(config: EncoderConfig) -> int:
    """Number of encoder blocks (``['encoder']['layers_{i}']``, i < this)."""
    return _field(config, "layers_field")


def ctc_classes(config: EncoderConfig) -> int:
    """CTC output classes (blank included) of the config's CTC head; 0 = none."""
    return _field(config, "vocab_field")


def input_kind(config: EncoderConfig) -> str:
    """"features" (log-mel [b, frames, n_mels]) or "waveform" ([b, samples] at 16 kHz)."""
    return ENCODERS[encoder_kind(config)].encoder.input_kind


def ctc_model(config: EncoderConfig) -> nn.Module:
    """Encoder + CTC head: ``ConformerCTC`` or ``Wav2Vec2CTC``."""
    return ENCODERS[encoder_kind(config)].ctc(config)


def example_inputs(config: EncoderConfig) -> tuple[jax.Array, jax.Array]:
    """A one-row zero input of the encoder's input kind, for ``init``: (inputs, lengths [1])."""
    if input_kind(config) == "features":
        frames = 64
        return jnp.zeros((1, frames, config.n_mels), jnp.float32), jnp.array([frames], jnp.int32)
    samples = max(4000, config.receptive_field)
    return jnp.zeros((1, samples), jnp.float32), jnp.array([samples], jnp.int32)


def read_encoder_dir(path: str) -> tuple[EncoderConfig, dict, dict]:
    """A ``conformer_ctc`` or ``wav2vec2`` model directory, as saved -> (config, variables, meta)."""
    from audiochat_jax.models import model_dir
    kind = model_dir.read_model_config(path).get("kind")
    if kind == conformer.KIND:
        return conformer.load(path)
    if kind == wav2vec2.KIND:
        return wav2vec2.load(path)
    raise ValueError(f"{path}/config.json: holds a {kind!r} model; a speech encoder directory is "
                     f"{conformer.KIND!r} or {wav2vec2.KIND!r} (the ctc task's export, or "
                     "`python -m audiochat_jax.convert`)")


def load_encoder_dir(path: str) -> tuple[EncoderConfig, dict, dict]:
    """An encoder directory with its variables in ``AudioEmbedder`` names -> (config, variables, meta).

    variables: ``{"params": {"encoder", ["ctc_head"]}, ["batch_stats": ...]}``. ``meta`` has
    ``features`` (FeatureConfig fields; for a waveform encoder only ``sample_rate`` is used)
    and ``vocab`` (``CharVocab.to_dict()``). A ``wav2vec2`` directory without a CTC head (a
    converted wav2vec2 / HuBERT encoder) gets 16 kHz features and the English character
    vocabulary, which sizes a fresh CTC head if alignment asks for one (``ctc_weight > 0``).
    """
    config, variables, meta = read_encoder_dir(path)
    if isinstance(config, ConformerConfig):
        return config, variables, meta
    meta = dict(meta)
    meta.setdefault("features", FeatureConfig().to_dict())
    params = variables["params"]
    if config.ctc_vocab_size > 0:
        if not isinstance(meta.get("vocab"), dict):
            raise ValueError(f"{path}: a CTC head without a CharVocab vocabulary (config.json 'vocab' is "
                             f"{type(meta.get('vocab')).__name__}, e.g. an HF tokenizer's); re-convert with "
                             "`--head none` to align the encoder alone, or train the head with the ctc task")
        if CharVocab.from_dict(meta["vocab"]).size != config.ctc_vocab_size:
            raise ValueError(f"{path}/config.json: the vocabulary has {CharVocab.from_dict(meta['vocab']).size} "
                             f"classes but the CTC head {config.ctc_vocab_size}")
        return config, {"params": {"encoder": params["encoder"], "ctc_head": params["lm_head"]}}, meta
    vocab = CharVocab.from_dict(meta["vocab"]) if isinstance(meta.get("vocab"), dict) else CharVocab.english()
    meta["vocab"] = vocab.to_dict()
    config = Wav2Vec2Config.from_dict({**config.to_dict(), "ctc_vocab_size": vocab.size})
    return config, {"params": {"encoder": params}}, meta


# ---------------------------------------------------------------------------------------
# The trainable half
# ---------------------------------------------------------------------------------------
class AudioEmbedder(nn.Module):
    """Encoder inputs -> LLM-width audio embeddings (the trainable half of the speech LLM)."""
    encoder: EncoderConfig      # ConformerConfig or Wav2Vec2Config: picks the encoder
    projector: ProjectorConfig
    ctc_head: bool = False      # also return CTC logits (``ctc_classes(encoder)`` classes)

    @property
    def input_kind(self) -> str:
        """What ``__call__`` takes: "features" (conformer) or "waveform" (wav2vec2)."""
        return input_kind(self.encoder)

    @nn.compact
    def __call__(self, inputs: jax.Array, lengths: jax.Array, *, train: bool = False) -> dict:
        """inputs: features [batch, frames, n_mels] f32 ("features") or waveforms [batch,
        samples] f32 ("waveform"); lengths [batch] int32 (valid frames / samples) ->
        ``{"embeddings": [batch, A, llm_dim], "lengths": [batch], "frame_lengths": [batch],
        "ctc_logits": [batch, T, vocab] f32 (only with ctc_head)}``."""
        kind = encoder_kind(self.encoder)
        frames, frame_lengths = ENCODERS[kind].encoder(self.encoder, name="encoder")(inputs, lengths, train=train)
        out = {"frame_lengths": frame_lengths}
        if self.ctc_head:
            n = ctc_classes(self.encoder)
            if n < 2:
                raise ValueError(f"AudioEmbedder: ctc_head needs {type(self.encoder).__name__}."
                                 f"{ENCODERS[kind].vocab_field} >= 2 (got {n}); take it from the CTC "
                                 "model's vocabulary")
            x = frames
            if kind == "wav2vec2":  # as Wav2Vec2CTC: dropout before the head
                x = nn.Dropout(self.encoder.final_dropout)(x, deterministic=not train)
            dt = dict(dtype=jnp.dtype(self.encoder.dtype), param_dtype=jnp.dtype(self.encoder.param_dtype))
            out["ctc_logits"] = nn.Dense(
                n, name="ctc_head",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "ctc_vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("ctc_vocab",)),
                **dt)(x).astype(jnp.float32)
        out["embeddings"], out["lengths"] = Projector(self.projector, name="projector")(frames, frame_lengths)
        return out


def embed_audio(embedder: AudioEmbedder, variables: dict, feature_config: FeatureConfig,
                audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
                rngs: dict | None = None, mutable=False):
    """Waveforms [batch, samples] f32 at 16 kHz, lengths [batch] -> the embedder's dict
    (and the updated collections when ``mutable`` names any).

    Log-mel (``feature_config``) only for a "features" encoder; a "waveform" encoder gets
    the padded waveform itself. An empty ``mutable`` (a wav2vec2 has no batch statistics)
    means none: the plain dict comes back.
    """
    if embedder.input_kind == "features":
        inputs, lengths = log_mel(audio, audio_lengths, feature_config)
    else:
        inputs, lengths = audio, audio_lengths
    return embedder.apply(variables, inputs, lengths, train=train, rngs=rngs, mutable=mutable or False)


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
                 response_lengths: jax.Array | None = None, prefix_lengths: jax.Array | None = None,
                 suffix_lengths: jax.Array | None = None) -> Spliced:
    """``[prefix | content | suffix | response]`` packed per row.

    prefix_ids / suffix_ids: int [P] / [S] shared by the batch, or [b, P] / [b, S] per row
    with ``prefix_lengths`` / ``suffix_lengths`` [b] (each row's own instruction); content
    either audio embeddings [b, A, dim] or transcript token ids [b, A] int (the text-prompted
    twin); response_ids [b, R] (teacher forcing; None for a generation prompt). Segment
    starts: ``starts[:, 1]`` is the content, ``starts[:, 3]`` the response.
    """
    if not jnp.issubdtype(content.dtype, jnp.floating):
        content = embed_tokens(llm_config, llm_params, content)

    def tokens(ids, lengths):
        ids = jnp.asarray(ids, jnp.int32)
        emb = embed_tokens(llm_config, llm_params, ids)
        return (emb[None], None) if ids.ndim == 1 else (emb, lengths)

    segs = [tokens(prefix_ids, prefix_lengths), (content, content_lengths), tokens(suffix_ids, suffix_lengths)]
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
class SpeechLLMConfig(DictConfig):
    """What an exported speech-LLM directory records (config.json of kind ``speech_llm``).

    ``encoder_kind`` names the encoder family of ``encoder`` (``ENCODERS``); directories
    written before it existed hold conformers, hence the default.
    """
    encoder: dict              # ConformerConfig or Wav2Vec2Config fields (see encoder_kind)
    projector: dict            # ProjectorConfig fields
    features: dict             # FeatureConfig fields (a waveform encoder uses sample_rate only)
    llm: dict                  # LlamaConfig fields of the frozen LLM
    ctc_head: bool = False
    prefix_ids: tuple = ()     # chat-template tokens before the audio
    suffix_ids: tuple = ()     # ... and after it
    encoder_kind: str = "conformer"   # "conformer" | "wav2vec2"

    def __post_init__(self):
        if self.encoder_kind not in ENCODERS:
            raise ValueError(f"SpeechLLMConfig.encoder_kind={self.encoder_kind!r} is not one of {sorted(ENCODERS)}")

    def encoder_config(self) -> EncoderConfig:
        return encoder_config(self.encoder_kind, self.encoder)

    def embedder(self) -> AudioEmbedder:
        return AudioEmbedder(self.encoder_config(), ProjectorConfig.from_dict(self.projector),
                             ctc_head=self.ctc_head)
