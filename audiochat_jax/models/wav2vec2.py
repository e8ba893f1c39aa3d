"""wav2vec 2.0 / HuBERT encoder in Flax linen: a drop-in alternative to the conformer.

Architecture (Baevski et al. 2020, arXiv:2006.11477; HuBERT, Hsu et al. 2021, arXiv:2106.07447),
written to match transformers' ``Wav2Vec2Model`` / ``HubertModel`` on the same weights:

    waveform [batch, samples] ─(per-utterance zero-mean/unit-var, if do_normalize)
      ─> conv feature encoder (strided 1-D convs, GroupNorm on the first layer ("group",
         wav2vec2-base) or LayerNorm on every layer ("layer", large / lv60 / HuBERT-large))
      ─> LayerNorm + Linear feature projection            [batch, frames, hidden]
      ─> + grouped convolutional relative position embedding (weight norm folded in)
      ─> transformer layers (post-LN, or pre-LN when do_stable_layer_norm) + final LayerNorm
      ─> frames [batch, frames, hidden], out_lengths [batch]

Input kind. The conformer consumes log-mel features; this encoder consumes raw 16 kHz
waveforms. Both classes carry a class attribute ``input_kind`` ("features" vs "waveform") so
a caller (the align / ctc task) picks what to feed: ``log_mel(wave, lengths)`` for
"features", the padded waveform itself for "waveform". ``lengths`` is always the valid
length of the input's time axis (samples here, feature frames for the conformer).

Padding. Everything is masked by ``lengths``, so an utterance's valid output frames do not
depend on how much padding its batch has. Two places needed care:
  * per-utterance normalisation uses only valid samples (HF's feature extractor does the same
    when it builds an attention mask);
  * the first conv layer's GroupNorm (feat_extract_norm="group") normalises each channel over
    time. HF computes those statistics over the padding too, which is why HF documents that
    wav2vec2-base must be run *without* attention_mask and unpadded. With
    ``group_norm_masked=True`` (default) we take the statistics over valid frames only, which
    equals HF on each utterance run alone; ``False`` reproduces HF's padded-batch computation.

Intermediate hidden states are sown into the ``intermediates`` collection (``hidden_states``:
the input of each transformer layer, then the last layer's output before the final norm of
the stable-layer-norm variant), matching HF's ``output_hidden_states`` tuple.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from audiochat_jax.util.config_fields import DictConfig


_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config(DictConfig):
    """Hyper-parameters; field names follow transformers' ``Wav2Vec2Config`` where they exist.

    Defaults are wav2vec2-base (arXiv:2006.11477 Table/§4.2: 7 convs of 512 channels, strides
    (5,2,2,2,2,2,2) = 320 samples = 20 ms per frame, 12 layers of width 768, 12 heads,
    FFN 3072, 128-tap positional conv in 16 groups).
    """
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"          # "group" (base) or "layer" (large / lv60)
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False        # pre-LN layers + final LN (large / lv60 / HuBERT-large)
    feat_proj_layer_norm: bool = True         # HuBERT checkpoints may turn it off
    do_normalize: bool = True                 # zero-mean unit-var per utterance (HF feature extractor)
    group_norm_masked: bool = True            # see module docstring, "Padding"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.0
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.0                # before the CTC head
    mask_time_prob: float = 0.0               # SpecAugment-style time masking in training
    mask_time_length: int = 10
    ctc_vocab_size: int = 0                   # > 0: Wav2Vec2CTC head size
    dtype: str = "float32"                    # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"                # "none" | "full" | "dots"

    def __post_init__(self):
        for name in ("conv_dim", "conv_stride", "conv_kernel"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) > 0:
            problems.append(f"conv_dim/conv_stride/conv_kernel must be non-empty and equally long, got "
                            f"{len(self.conv_dim)}/{len(self.conv_stride)}/{len(self.conv_kernel)}")
        if self.feat_extract_norm not in ("group", "layer"):
            problems.append(f"feat_extract_norm={self.feat_extract_norm!r} must be 'group' or 'layer'")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            problems.append(f"hidden_size={self.hidden_size} is not divisible by "
                            f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}")
        if self.remat_policy not in _REMAT_POLICIES:
            problems.append(f"remat_policy={self.remat_policy!r} is not one of {sorted(_REMAT_POLICIES)}")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                problems.append(f"{name}={getattr(self, name)!r} is not a dtype name such as 'bfloat16'")
        if problems:
            raise ValueError("invalid Wav2Vec2Config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def samples_per_frame(self) -> int:
        """Total stride of the conv stack (320 = 20 ms at 16 kHz for the published models)."""
        out = 1
        for s in self.conv_stride:
            out *= s
        return out

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame = the shortest input giving one frame (400 = 25 ms)."""
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            r = (r - 1) * s + k
        return r

    def output_lengths(self, lengths):
        """Frames produced from ``lengths`` samples (HF ``_get_feat_extract_output_lengths``).

        Works on Python ints, numpy and jax arrays. Each VALID conv maps L -> (L - k) // s + 1;
        the result is clipped at 0 (inputs shorter than the receptive field give no frame).
        """
        for k, s in zip(self.conv_kernel, self.conv_stride):
            lengths = (lengths - k) // s + 1
        return jnp.maximum(lengths, 0) if isinstance(lengths, jax.Array) else \
            (max(lengths, 0) if isinstance(lengths, int) else lengths.clip(min=0))


class Dense(nn.Module):
    """``x[..., *in] @ kernel[*in, *features] + bias[*features]`` with logical names.

    Written out rather than ``nn.DenseGeneral``: DenseGeneral initialises a flat 2-D kernel
    and reshapes it, and linen re-runs that init under ``eval_shape`` at apply time to check
    shapes, where the 2-D value meets the 3-name logical constraint and fails on a mesh.
    """
    features: tuple[int, ...]
    names: tuple[str, ...]        # kernel axes: contracted input axes, then feature axes
    bias_names: tuple[str, ...]
    n_in: int = 1                 # trailing input axes contracted
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        shape = x.shape[x.ndim - self.n_in:] + self.features
        init = nn.initializers.lecun_normal(in_axis=tuple(range(self.n_in)),
                                            out_axis=tuple(range(self.n_in, len(shape))))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), shape,
                            jnp.dtype(self.param_dtype))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_names),
                          self.features, jnp.dtype(self.param_dtype))
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
        return y + bias.astype(self.dtype)


def _dense(cfg, features, names, name, bias_names=None, n_in=1):
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(features, names, bias_names or names[-1:], n_in, cfg.dtype, cfg.param_dtype, name=name)


def _layer_norm(cfg, name, eps=None):
    # use_fast_variance=False: E[(x-mean)^2] like torch, not E[x^2]-mean^2 (parity at 1e-4).
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps if eps is None else eps, dtype=jnp.float32,
                        param_dtype=cfg.param_dtype, use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


def _frame_mask(lengths, n):
    """[batch, n] bool, True on valid frames."""
    return jnp.arange(n)[None, :] < lengths[:, None]


class FeatureEncoder(nn.Module):
    """Strided conv stack: waveform [batch, samples] -> [batch, frames, conv_dim[-1]]."""
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, wave, lengths):
        cfg = self.config
        act = _ACTIVATIONS[cfg.feat_extract_activation]
        x = wave[:, :, None].astype(cfg.dtype)
        for i, (dim, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            x = nn.Conv(dim, (k,), strides=(s,), padding="VALID", use_bias=cfg.conv_bias,
                        dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=f"conv_{i}",
                        kernel_init=nn.with_logical_partitioning(
                            nn.initializers.he_normal(), ("conv_k", "conv_in", "conv_out")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))(x)
            lengths = (lengths - k) // s + 1
            if cfg.feat_extract_norm == "layer":
                x = _layer_norm(cfg, f"norm_{i}", eps=1e-5)(x)  # HF: torch default eps here
            elif i == 0:
                # One group per channel = per-channel statistics over time (torch GroupNorm eps).
                mask = None
                if cfg.group_norm_masked:
                    # max(., 1): an empty row (batch padding) must not divide by zero (NaN grads).
                    mask = _frame_mask(jnp.maximum(lengths, 1), x.shape[1])[:, :, None]
                    mask = jnp.broadcast_to(mask, x.shape)
                x = nn.GroupNorm(num_groups=dim, epsilon=1e-5, dtype=jnp.float32,
                                 param_dtype=cfg.param_dtype, use_fast_variance=False, name="norm_0",
                                 scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
                                 )(x, mask=mask)
            x = act(x).astype(cfg.dtype)
        return x


class PositionalConvEmbedding(nn.Module):
    """Grouped 'same' conv over time + activation: the relative position signal [b, t, d]."""
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        k = cfg.num_conv_pos_embeddings
        # HF pads k//2 on both sides and drops the last frame for even k: same as (k//2, k//2 - 1).
        pad = (k // 2, k // 2 - (1 - k % 2))
        y = nn.Conv(cfg.hidden_size, (k,), padding=[pad], feature_group_count=cfg.num_conv_pos_embedding_groups,
                    dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="conv",
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.he_normal(), ("conv_k", "conv_in", "conv_out")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))(x)
        return _ACTIVATIONS[cfg.feat_extract_activation](y)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over valid keys: [b, t, d] -> [b, t, d]."""
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, lengths, *, train: bool):
        cfg = self.config
        # A zero-length row (batch padding) would have no key to attend to: give it one so it
        # stays finite; its frames are zeroed by the caller anyway.
        lengths = jnp.maximum(lengths, 1)
        heads = (cfg.num_heads, cfg.head_dim)
        q, k, v = (_dense(cfg, heads, ("embed", "heads", "kv"), n, bias_names=("heads", "kv"))(x) for n in ("q_proj", "k_proj", "v_proj"))
        q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "act_heads", "act_kv")) for t in (q, k, v))
        if train and cfg.attention_dropout > 0:
            # jax.nn.dot_product_attention has no dropout: spell out the softmax here only then.
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * cfg.head_dim ** -0.5
            key_ok = _frame_mask(lengths, x.shape[1])[:, None, None, :]
            probs = jax.nn.softmax(jnp.where(key_ok, logits, jnp.finfo(jnp.float32).min), axis=-1)
            probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=False)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths.astype(jnp.int32))
        return _dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "out_proj",
                      bias_names=("norm",), n_in=2)(out)


class FeedForward(nn.Module):
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, *, train: bool):
        cfg = self.config
        h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate_dense")(x)
        h = nn.with_logical_constraint(_ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "act_mlp"))
        h = nn.Dropout(cfg.activation_dropout)(h, deterministic=not train)
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output_dense", bias_names=("norm",))(h)
        return nn.Dropout(cfg.hidden_dropout)(h, deterministic=not train)


class EncoderLayer(nn.Module):
    """Post-LN (base) or pre-LN (do_stable_layer_norm) transformer layer: [b, t, d] -> [b, t, d]."""
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, lengths, train: bool = False):
        cfg = self.config
        attn, ff = SelfAttention(cfg, name="attention"), FeedForward(cfg, name="feed_forward")
        ln1, ln2 = _layer_norm(cfg, "layer_norm"), _layer_norm(cfg, "final_layer_norm")
        drop = nn.Dropout(cfg.hidden_dropout)
        if cfg.do_stable_layer_norm:
            x = x + drop(attn(ln1(x).astype(cfg.dtype), lengths, train=train), deterministic=not train)
            x = x + ff(ln2(x).astype(cfg.dtype), train=train)
        else:
            x = ln1(x + drop(attn(x, lengths, train=train), deterministic=not train)).astype(cfg.dtype)
            x = ln2(x + ff(x, train=train)).astype(cfg.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Wav2Vec2Encoder(nn.Module):
    """wav2vec2 / HuBERT encoder with the conformer encoder's interface.

    ``__call__(inputs [batch, samples] f32, lengths [batch] int, *, train=False)
    -> (frames [batch, out_frames, hidden_size], out_lengths [batch] int32)``; out_frames =
    ``config.output_lengths(samples)``; frames past ``out_lengths`` are zero. In training
    (``train=True``) it needs a ``'dropout'`` rng (also used for time masking).
    """
    config: Wav2Vec2Config
    input_kind = "waveform"  # the conformer's is "features": the caller feeds what this names

    @nn.compact
    def __call__(self, inputs, lengths, *, train: bool = False):
        cfg = self.config
        if inputs.ndim != 2:
            raise ValueError(f"Wav2Vec2Encoder takes waveforms [batch, samples], got shape {inputs.shape}; "
                             f"input_kind is 'waveform' (feed raw 16 kHz audio, not log-mel features)")
        lengths = jnp.asarray(lengths, jnp.int32)
        wave = inputs.astype(jnp.float32)
        valid = _frame_mask(lengths, wave.shape[1])
        if cfg.do_normalize:
            n = jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
            mean = jnp.sum(jnp.where(valid, wave, 0.0), axis=1, keepdims=True) / n
            var = jnp.sum(jnp.where(valid, (wave - mean) ** 2, 0.0), axis=1, keepdims=True) / n
            wave = (wave - mean) / jnp.sqrt(var + 1e-7)  # eps as HF Wav2Vec2FeatureExtractor
        wave = jnp.where(valid, wave, 0.0)

        x = FeatureEncoder(cfg, name="feature_extractor")(wave, lengths)
        out_lengths = cfg.output_lengths(lengths)
        frame_ok = _frame_mask(out_lengths, x.shape[1])[:, :, None]

        # Feature projection.
        if cfg.feat_proj_layer_norm:
            x = _layer_norm(cfg, "feature_projection_norm")(x)
        x = _dense(cfg, cfg.hidden_size, ("conv_out", "embed"), "feature_projection", bias_names=("norm",))(
            x.astype(cfg.dtype))
        x = nn.Dropout(cfg.feat_proj_dropout)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        if cfg.mask_time_prob > 0:
            mask_emb = self.param("masked_spec_embed", nn.with_logical_partitioning(
                nn.initializers.uniform(1.0), ("norm",)), (cfg.hidden_size,), cfg.param_dtype)
            if train:
                x = jnp.where(self._time_mask(out_lengths, x.shape[1])[:, :, None], mask_emb.astype(x.dtype), x)

        # Padded frames are zeroed so the 'same' position conv sees zero padding, as for the
        # utterance alone.
        x = jnp.where(frame_ok, x, 0).astype(cfg.dtype)
        x = x + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x).astype(cfg.dtype)
        if not cfg.do_stable_layer_norm:
            x = _layer_norm(cfg, "encoder_layer_norm")(x).astype(cfg.dtype)
        x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)

        layer_cls = EncoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(EncoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], static_argnums=(3,))
        for i in range(cfg.num_layers):
            self.sow("intermediates", "hidden_states", x)
            x = layer_cls(cfg, name=f"layers_{i}")(x, out_lengths, train)
        self.sow("intermediates", "hidden_states", x)
        if cfg.do_stable_layer_norm:
            x = _layer_norm(cfg, "encoder_layer_norm")(x).astype(cfg.dtype)
        return jnp.where(frame_ok, x, 0), out_lengths

    def _time_mask(self, lengths, n):
        """[batch, n] bool spans to replace by ``masked_spec_embed`` (SpecAugment in time).

        Span starts are Bernoulli(mask_time_prob / mask_time_length) per valid frame, each
        covering mask_time_length frames: the expected masked fraction matches HF's
        ``_compute_mask_indices`` (which samples an exact span count on the host in numpy).
        """
        cfg = self.config
        rng = self.make_rng("dropout")
        starts = jax.random.bernoulli(rng, cfg.mask_time_prob / cfg.mask_time_length, (lengths.shape[0], n))
        starts = starts & _frame_mask(lengths - cfg.mask_time_length + 1, n)
        spans = jax.lax.reduce_window(starts.astype(jnp.int32), 0, jax.lax.add, (1, cfg.mask_time_length),
                                      (1, 1), [(0, 0), (cfg.mask_time_length - 1, 0)])
        return spans > 0


class Wav2Vec2CTC(nn.Module):
    """Encoder + dropout + linear CTC head (HF ``Wav2Vec2ForCTC``; blank = HF pad_token_id).

    Same inputs as ``Wav2Vec2Encoder``; returns (logits [batch, out_frames, ctc_vocab_size]
    float32, out_lengths [batch]). Params: {"encoder": ..., "lm_head": ...}.
    """
    config: Wav2Vec2Config
    input_kind = "waveform"

    @nn.compact
    def __call__(self, inputs, lengths, *, train: bool = False):
        cfg = self.config
        if cfg.ctc_vocab_size <= 0:
            raise ValueError("Wav2Vec2CTC needs config.ctc_vocab_size > 0 (the number of CTC output classes)")
        x, out_lengths = Wav2Vec2Encoder(cfg, name="encoder")(inputs, lengths, train=train)
        x = nn.Dropout(cfg.final_dropout)(x, deterministic=not train)
        logits = _dense(cfg, cfg.ctc_vocab_size, ("embed", "ctc_vocab"), "lm_head")(x)
        return logits.astype(jnp.float32), out_lengths


def hidden_states(intermediates: dict[str, Any]) -> Sequence[jax.Array]:
    """The sown hidden states of ``apply(..., mutable=['intermediates'])``, HF order."""
    return intermediates["intermediates"]["hidden_states"]


# --- model directories (kind "wav2vec2") -----------------------------------------------------

KIND = "wav2vec2"


def model_for(config: Wav2Vec2Config) -> nn.Module:
    """``Wav2Vec2CTC`` when the config has a CTC head (ctc_vocab_size > 0), else the encoder."""
    return Wav2Vec2CTC(config) if config.ctc_vocab_size > 0 else Wav2Vec2Encoder(config)


def init_variables(config: Wav2Vec2Config, rng: jax.Array, samples: int = 4000) -> dict:
    """Unboxed ``{"params": ...}`` of ``model_for(config)``."""
    samples = max(samples, config.receptive_field)
    wave = jnp.zeros((1, samples), jnp.float32)
    # jit: op-by-op init of the conv stack costs seconds of dispatch on CPU.
    return nn.unbox(jax.jit(model_for(config).init)(rng, wave, jnp.array([samples], jnp.int32)))


def encoder_variables(config: Wav2Vec2Config, variables: dict) -> dict:
    """The ``Wav2Vec2Encoder`` variables inside ``variables`` of either model class."""
    return {"params": variables["params"]["encoder"]} if config.ctc_vocab_size > 0 else variables


def save(path: str, config: Wav2Vec2Config, variables: dict, **extra) -> None:
    """Writes a ``wav2vec2`` model directory (``variables`` = ``{"params": ...}``)."""
    from audiochat_jax.models import model_dir  # models stay importable without orbax at import time
    model_dir.save_model_dir(path, KIND, config.to_dict(), dict(variables), **extra)


def load(path: str) -> tuple[Wav2Vec2Config, dict, dict]:
    """Reads a ``wav2vec2`` model directory -> ``(config, variables, meta)``."""
    from audiochat_jax.models import model_dir
    meta, tree = model_dir.load_model_dir(path, KIND)
    config = Wav2Vec2Config.from_dict(meta["config"])
    return config, (tree if "params" in tree else {"params": tree}), meta
