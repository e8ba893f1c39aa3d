"""NeMo-style conformer encoder and CTC model (Flax linen).

The network is NeMo's ``ConformerEncoder`` (FastConformer settings) as re-implemented by
transformers' ``ParakeetEncoder``; module names follow NeMo (``pre_encode``, ``layers_N``,
``norm_feed_forward1``, ``self_attn.linear_q``, ``pos_bias_u``, ``conv.depthwise_conv``, ...)
so checkpoint mapping (convert/conformer.py) is name-for-name.

    features [batch, frames, n_mels]
      -> ConvSubsampling: 2-D convs over (time, mel), stride 2 each, log2(factor) of them
         ("striding": full convs; "dw_striding": first full, then depthwise + pointwise),
         ReLU, time-padding re-zeroed after every conv; flatten (channels, mel') -> Linear
      -> * sqrt(d_model) (xscaling)
      -> n_layers x ConformerBlock (macaron), unrolled or (``scan_layers``) one scanned block
         over the same ``layers_{i}`` parameters:
           x += 0.5 * FF(LN(x)); x += RelPosMHSA(LN(x)); x += Conv(LN(x));
           x += 0.5 * FF(LN(x)); x = LN(x)
      -> frames [batch, out_frames, d_model] (padded frames zeroed), out_lengths [batch]
    ConformerCTC: + Linear(d_model -> vocab) logits; blank is the LAST class (NeMo / HF).

Padding: a ``[batch, out_frames]`` mask follows the data through every step: subsampling
re-zeroes padded time steps after each conv (bias terms would otherwise leak into the next
conv's receptive field), attention masks padded keys and zeroes padded queries, the
convolution module zeroes padded frames before its depthwise conv, batch-norm statistics
use valid frames only, and the encoder output is zero past each length. So every valid
output frame is independent of how much padding its batch carries.

Variables: ``{"params": ...}`` plus ``{"batch_stats": ...}`` when ``conv_norm="batch_norm"``
(running mean/var of the convolution module). Training with batch norm needs
``apply(..., train=True, mutable=["batch_stats"], rngs={"dropout": rng})``;
``conv_norm="layer_norm"`` (a NeMo FastConformer option) keeps the step free of state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import model_dir
from audiochat_jax.models import layer_stack, precision
from audiochat_jax.models.depthwise_conv import DepthwiseConv
from audiochat_jax.util.config_fields import DictConfig

KIND = "conformer_ctc"

_SUBSAMPLING = ("striding", "dw_striding")
_CONV_NORMS = ("batch_norm", "layer_norm")
_REMAT = {
    "none": None,
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise work.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ConformerConfig(DictConfig):
    """Conformer encoder (+ CTC head) hyper-parameters; plain JSON-able fields.

    Defaults are NeMo's ``stt_en_conformer_ctc_small`` encoder shape (d=176, 16 layers,
    4 heads, FFN 4x, kernel 31, 4x striding subsampling) with an 80-mel front end.
    """
    n_mels: int = 80
    d_model: int = 176
    n_layers: int = 16
    n_heads: int = 4
    ffn_dim: int = 704
    conv_kernel_size: int = 31
    subsampling: str = "striding"          # "striding" | "dw_striding"
    subsampling_factor: int = 4            # 2, 4, 8 or 16: log2(factor) stride-2 convs
    subsampling_channels: int = 176
    subsampling_kernel_size: int = 3
    xscaling: bool = True                  # multiply subsampled frames by sqrt(d_model)
    conv_norm: str = "batch_norm"          # "batch_norm" | "layer_norm"
    use_bias: bool = True                  # attention and feed-forward biases
    conv_bias: bool = True                 # convolution-module biases
    vocab_size: int = 0                    # CTC classes including the blank (last); CTC only
    dropout: float = 0.1                   # residual branches, FF hidden, subsampled input
    attention_dropout: float = 0.1
    norm_eps: float = 1e-5
    dtype: str = "float32"                 # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"             # "none" | "full" | "dots"
    # One scanned block (compile time independent of depth) instead of n_layers unrolled; the
    # parameters keep the unrolled ``layers_{i}`` layout either way (see ConformerEncoder).
    scan_layers: bool = False

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"ConformerConfig.{field}={getattr(self, field)!r}: {why}")
        if self.d_model % self.n_heads:
            bad("n_heads", f"must divide d_model={self.d_model}")
        if self.subsampling not in _SUBSAMPLING:
            bad("subsampling", f"use one of {_SUBSAMPLING}")
        f = self.subsampling_factor
        if f < 2 or f & (f - 1):
            bad("subsampling_factor", "must be a power of two >= 2 (each conv strides by 2)")
        if self.conv_kernel_size % 2 == 0:
            bad("conv_kernel_size", "must be odd ('same' padding)")
        if self.conv_norm not in _CONV_NORMS:
            bad("conv_norm", f"use one of {_CONV_NORMS}")
        if self.remat_policy not in _REMAT:
            bad("remat_policy", f"use one of {tuple(_REMAT)}")
        for field in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError:
                bad(field, "not a dtype name; use e.g. 'float32' or 'bfloat16'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_subsampling_convs(self) -> int:
        return int(math.log2(self.subsampling_factor))



def subsampled_lengths(lengths, config: ConformerConfig):
    """Frame counts after subsampling: each stride-2 conv maps L -> (L + 2p - k) // 2 + 1.

    Works on Python ints, numpy and jax arrays (``[batch]`` int32).
    """
    for _ in range(config.n_subsampling_convs):
        lengths = _stride2_lengths(lengths, config.subsampling_kernel_size)
    return lengths


def _stride2_lengths(lengths, k: int):
    """One stride-2 conv of kernel ``k`` with ``(k - 1) // 2`` padding: L -> (L + 2p - k) // 2 + 1."""
    return (lengths + 2 * ((k - 1) // 2) - k) // 2 + 1


def relative_positions(length: int, d_model: int) -> jax.Array:
    """Sinusoidal embeddings of relative positions ``length-1 .. -(length-1)``.

    Returns ``[2 * length - 1, d_model]`` float32 with sin/cos interleaved (NeMo's
    ``RelPositionalEncoding``: ``pe[:, 0::2] = sin``, ``pe[:, 1::2] = cos``).
    """
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
    pos = jnp.arange(length - 1, -length, -1, dtype=jnp.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    return jnp.stack([jnp.sin(freqs), jnp.cos(freqs)], axis=-1).reshape(2 * length - 1, d_model)


def _kernel(names):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


def _zeros(names):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _dtypes(cfg: ConformerConfig) -> dict:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _dense(cfg: ConformerConfig, features: int, name: str, names, bias_names, use_bias: bool = True) -> nn.Dense:
    """A Linear whose product takes this backend's fast bfloat16 form (models/precision.py)."""
    return nn.Dense(features, use_bias=use_bias, name=name, kernel_init=_kernel(names),
                    bias_init=_zeros(bias_names), dot_general=precision.dot_general, **_dtypes(cfg))


def _layer_norm(cfg: ConformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.norm_eps, scale_init=_ones(("norm",)), bias_init=_zeros(("norm",)),
                        name=name, **_dtypes(cfg))


class ConvSubsampling(nn.Module):
    """Time (and mel) subsampling by ``config.subsampling_factor`` with 2-D convolutions.

    Submodule names carry the index of the layer in NeMo's ``pre_encode.conv`` /
    HF's ``subsampling.layers`` ``Sequential`` (ReLUs take the missing indices).
    """
    config: ConformerConfig

    @nn.compact
    def __call__(self, features: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """features [batch, frames, n_mels], lengths [batch] -> ([batch, frames', d_model], [batch])."""
        cfg = self.config
        k, c = cfg.subsampling_kernel_size, cfg.subsampling_channels
        pad = ((k - 1) // 2,) * 2
        # Zero input frames past each length: the first conv's window reaches one frame beyond.
        valid = jnp.arange(features.shape[1])[None, :] < lengths[:, None]
        x = jnp.where(valid[..., None], features, 0)[..., None].astype(jnp.dtype(cfg.dtype))  # NHWC

        def conv(x, idx, kernel, stride, groups):
            if groups > 1:
                x = DepthwiseConv(c, (kernel, kernel), (stride, stride), (pad, pad), name=f"conv_{idx}",
                                  kernel_axes=("conv_k", None, "conv_in", "conv_out"), **_dtypes(cfg))(x)
            else:
                x = nn.Conv(c, (kernel, kernel), strides=(stride, stride),
                            padding=(pad, pad) if kernel > 1 else "VALID", name=f"conv_{idx}",
                            # A name may not repeat: the mel-tap axis stays unnamed (replicated like conv_k).
                            kernel_init=_kernel(("conv_k", None, "conv_in", "conv_out")),
                            bias_init=_zeros(("norm",)), **_dtypes(cfg))(x)
            # Zero padded time steps so conv biases do not leak into the next receptive field.
            valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            return jnp.where(valid[:, :, None, None], x, 0)

        idx = 0  # position in the reference Sequential: conv, [dw conv, pw conv,] ReLU, ...
        for i in range(cfg.n_subsampling_convs):
            lengths = _stride2_lengths(lengths, k)
            if i == 0 or cfg.subsampling == "striding":
                x, idx = conv(x, idx, k, 2, 1), idx + 1
            else:  # depthwise stride-2 conv, then pointwise channel mixing
                x, idx = conv(conv(x, idx, k, 2, c), idx + 1, 1, 1, 1), idx + 2
            x, idx = nn.relu(x), idx + 1
        b, t, f, ch = x.shape
        # Flatten channel-major (torch's [batch, time, channels, mel'] order) so the Linear's
        # input layout is the checkpoints' one.
        x = x.transpose(0, 1, 3, 2).reshape(b, t, ch * f)
        x = _dense(cfg, cfg.d_model, "out", ("conv_out", "embed"), ("norm",))(x)
        return x, lengths


class FeedForward(nn.Module):
    """Linear -> Swish -> dropout -> Linear. [batch, length, d_model] -> same."""
    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = _dense(cfg, cfg.ffn_dim, "linear1", ("embed", "mlp"), ("mlp",), cfg.use_bias)(x)
        x = nn.with_logical_constraint(nn.swish(x), ("batch", "length", "act_mlp"))
        x = nn.Dropout(cfg.dropout)(x, deterministic=self.deterministic)
        return _dense(cfg, cfg.d_model, "linear2", ("mlp", "embed"), ("norm",), cfg.use_bias)(x)


def _rel_shift(scores: jax.Array) -> jax.Array:
    """Transformer-XL shift: [..., T, 2T-1] scores by relative-position index -> [..., T, T].

    Row i of the input scores positions ``T-1 .. -(T-1)``; output [i, j] is the score of
    relative position ``i - j`` (pad one column, re-read the buffer with rows of T).
    """
    *lead, t, p = scores.shape
    scores = jnp.pad(scores, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
    scores = scores.reshape(*lead, p + 1, t)[..., 1:, :].reshape(*lead, t, p)
    return scores[..., :t]


class HeadProjection(nn.Module):
    """[..., d_model] -> [..., heads, head_dim] with an ``('embed', 'heads', 'kv')`` kernel, or
    with ``merge=True`` [..., heads, head_dim] -> [..., d_model] with ``('heads', 'kv', 'embed')``.

    Not ``nn.DenseGeneral``: it initialises a flattened 2-D kernel and reshapes, so its
    3 logical names cannot be applied while a mesh is active.
    """
    heads: int
    head_dim: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    merge: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, dk = self.heads, self.head_dim
        if self.merge:
            d = h * dk
            kernel = self.param("kernel", _kernel(("heads", "kv", "embed")), (h, dk, d), self.param_dtype)
            y = precision.einsum("...hd,hde->...e", x, kernel, self.dtype)
            bias_shape, bias_names = (d,), ("norm",)
        else:
            kernel = self.param("kernel", _kernel(("embed", "heads", "kv")), (x.shape[-1], h, dk), self.param_dtype)
            y = precision.einsum("...e,ehd->...hd", x, kernel, self.dtype)
            bias_shape, bias_names = (h, dk), ("heads", "kv")
        if self.use_bias:
            y = y + self.param("bias", _zeros(bias_names), bias_shape, self.param_dtype).astype(self.dtype)
        return y


class RelPositionSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (pos_bias_u / v).

    score[i, j] = ((q_i + u) . k_j + (q_i + v) . W_pos p_{i-j}) / sqrt(head_dim)
    """
    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, mask: jax.Array) -> jax.Array:
        """x [batch, T, d_model], pos [2T-1, d_model], mask [batch, T] bool -> [batch, T, d_model]."""
        cfg = self.config
        h, dk = cfg.n_heads, cfg.head_dim

        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def proj(name, inp, bias=cfg.use_bias):
            return HeadProjection(h, dk, bias, dtype, pdtype, name=name)(inp)

        q, k, v = proj("linear_q", x), proj("linear_k", x), proj("linear_v", x)  # [b, T, h, dk]
        p = proj("linear_pos", pos.astype(x.dtype), bias=False)                  # [2T-1, h, dk]
        pos_bias_u = self.param("pos_bias_u", _zeros(("heads", "kv")), (h, dk), jnp.dtype(cfg.param_dtype))
        pos_bias_v = self.param("pos_bias_v", _zeros(("heads", "kv")), (h, dk), jnp.dtype(cfg.param_dtype))
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "act_kv"))
        content = precision.einsum("bthd,bshd->bhts", q + pos_bias_u.astype(q.dtype), k, dtype)
        position = _rel_shift(precision.einsum("bthd,phd->bhtp", q + pos_bias_v.astype(q.dtype), p, dtype))
        # Softmax in at least float32 (bf16 compute would lose the small logits).
        scores = (content + position).astype(jnp.promote_types(content.dtype, jnp.float32)) / math.sqrt(dk)
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=self.deterministic)
        out = precision.einsum("bhts,bshd->bthd", probs, v, dtype)
        # A padded query has no valid keys of its own meaning; zero it (NeMo does the same).
        out = jnp.where(mask[:, :, None, None], out, 0)
        return HeadProjection(h, dk, cfg.use_bias, dtype, pdtype, merge=True, name="linear_out")(out)


class ConvModule(nn.Module):
    """Pointwise (2x) -> GLU -> depthwise conv -> norm -> Swish -> pointwise."""
    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [batch, T, d_model], mask [batch, T] bool -> [batch, T, d_model]."""
        cfg = self.config
        d, kk = cfg.d_model, cfg.conv_kernel_size
        x = _dense(cfg, 2 * d, "pointwise_conv1", ("embed", "mlp"), ("mlp",), cfg.conv_bias)(x)
        x = nn.glu(x, axis=-1)
        # Padded frames must not enter the depthwise conv's window of valid frames.
        x = jnp.where(mask[..., None], x, 0)
        x = DepthwiseConv(d, (kk,), (1,), (((kk - 1) // 2,) * 2,), ("conv_k", "conv_in", "embed"),
                          use_bias=cfg.conv_bias, name="depthwise_conv", **_dtypes(cfg))(x)
        if cfg.conv_norm == "batch_norm":
            # torch momentum 0.1 == flax momentum 0.9; statistics over valid frames only.
            x = nn.BatchNorm(use_running_average=self.deterministic, momentum=0.9, epsilon=1e-5,
                             scale_init=_ones(("norm",)), bias_init=_zeros(("norm",)), name="batch_norm",
                             **_dtypes(cfg))(x, mask=mask[..., None])
        else:
            x = _layer_norm(cfg, "batch_norm")(x)  # NeMo keeps the name for either norm
        x = nn.swish(x)
        return _dense(cfg, d, "pointwise_conv2", ("mlp", "embed"), ("norm",), cfg.conv_bias)(x)


class ConformerBlock(nn.Module):
    """Macaron conformer block. x [batch, T, d_model] -> [batch, T, d_model]."""
    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, mask: jax.Array) -> jax.Array:
        cfg, det = self.config, self.deterministic
        drop = nn.Dropout(cfg.dropout)
        ff1 = FeedForward(cfg, det, name="feed_forward1")(_layer_norm(cfg, "norm_feed_forward1")(x))
        x = x + 0.5 * drop(ff1, deterministic=det)
        att = RelPositionSelfAttention(cfg, det, name="self_attn")(_layer_norm(cfg, "norm_self_att")(x), pos, mask)
        x = x + drop(att, deterministic=det)
        conv = ConvModule(cfg, det, name="conv")(_layer_norm(cfg, "norm_conv")(x), mask)
        x = x + drop(conv, deterministic=det)
        ff2 = FeedForward(cfg, det, name="feed_forward2")(_layer_norm(cfg, "norm_feed_forward2")(x))
        x = x + 0.5 * drop(ff2, deterministic=det)
        x = _layer_norm(cfg, "norm_out")(x)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class ConformerEncoder(nn.Module):
    """Log-mel features -> conformer frames (the contract every speech encoder here keeps)."""
    config: ConformerConfig
    input_kind = "features"  # consumes log-mels; wav2vec2 consumes "waveform"

    @nn.compact
    def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
        """features [batch, frames, n_mels] f32, lengths [batch] int32 (valid frames)
        -> (frames [batch, out_frames, d_model], out_lengths [batch] int32).

        ``out_frames = subsampled_lengths(frames)``; frames past ``out_lengths`` are zero.
        """
        cfg = self.config
        if features.ndim != 3 or features.shape[-1] != cfg.n_mels:
            raise ValueError(f"ConformerEncoder: features have shape {features.shape}, expected "
                             f"[batch, frames, n_mels={cfg.n_mels}]; FeatureConfig.n_mels must equal "
                             f"ConformerConfig.n_mels")
        lengths = jnp.minimum(lengths.astype(jnp.int32), features.shape[1])
        x, lengths = ConvSubsampling(cfg, name="pre_encode")(features, lengths)
        t = x.shape[1]
        mask = jnp.arange(t)[None, :] < lengths[:, None]  # [batch, T]
        if cfg.xscaling:
            x = x * math.sqrt(cfg.d_model)
        x = nn.Dropout(cfg.dropout)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        pos = relative_positions(t, cfg.d_model)
        block = ConformerBlock
        if _REMAT[cfg.remat_policy] is not None:
            # prevent_cse is only needed outside scan (scan already blocks CSE across steps).
            block = nn.remat(ConformerBlock, policy=_REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x = _scanned_blocks(self, block, x, pos, mask, not train)
        else:
            for i in range(cfg.n_layers):
                x = block(cfg, not train, name=f"layers_{i}")(x, pos, mask)
        return jnp.where(mask[..., None], x, 0), lengths


def _scanned_blocks(encoder: nn.Module, block: type, x, pos, mask, deterministic: bool) -> jax.Array:
    """The encoder's blocks as one ``nn.scan``ned block: XLA compiles one block, not n_layers
    (on a 2-core CPU the paper conformer's forward + backward compiles about 5 s per unrolled
    block). ``map_variables`` stacks the stored ``layers_{i}`` parameters (and batch-norm
    statistics) into the scan's ``layers`` [n_layers, ...] on the way in and unstacks what
    init or a batch-norm update writes on the way out, so checkpoints, checkpoint conversion
    and ``top:N`` trainable patterns see the same tree as an unrolled encoder's. Each block
    draws its own dropout masks (split rngs), not the unrolled blocks' masks."""
    cfg = encoder.config

    def run(mdl, x):
        scan = nn.scan(lambda blk, carry: (blk(carry, pos, mask), None),
                       variable_axes={"params": 0, "batch_stats": 0},
                       split_rngs={"params": True, "dropout": True}, length=cfg.n_layers,
                       metadata_params={nn.PARTITION_NAME: layer_stack.LAYER_AXIS})
        return scan(block(cfg, deterministic, name=layer_stack.LAYER_AXIS, parent=mdl), x)[0]

    def each(fn):
        return lambda variables: {col: fn(tree) for col, tree in variables.items()}

    mapped = nn.map_variables(run, ["params", "batch_stats"], trans_in_fn=each(layer_stack.stack_layers),
                              trans_out_fn=each(layer_stack.unstack_layers),
                              init=encoder.is_initializing(), mutable=True)
    return mapped(encoder, x)


class ConformerCTC(nn.Module):
    """Conformer encoder + linear CTC head (NeMo's ``ConvASRDecoder``: a 1x1 conv)."""
    config: ConformerConfig
    input_kind = "features"

    @nn.compact
    def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
        """features [batch, frames, n_mels], lengths [batch]
        -> (logits [batch, out_frames, vocab_size] f32, out_lengths [batch] int32).

        Logits are unnormalised (``jax.nn.log_softmax`` gives NeMo's decoder output);
        the blank is class ``vocab_size - 1``.
        """
        cfg = self.config
        if cfg.vocab_size < 2:
            raise ValueError(f"ConformerConfig.vocab_size={cfg.vocab_size}: a CTC model needs the number of "
                             f"output classes including the blank (set it from the vocabulary's size)")
        x, lengths = ConformerEncoder(cfg, name="encoder")(features, lengths, train=train)
        logits = nn.Dense(cfg.vocab_size, name="ctc_head", kernel_init=_kernel(("embed", "ctc_vocab")),
                          bias_init=_zeros(("ctc_vocab",)), **_dtypes(cfg))(x)
        return logits.astype(jnp.float32), lengths


def layer_flops(config: ConformerConfig, frames: int, rows: int) -> float:
    """Forward FLOPs of one conformer block over ``rows`` sequences of ``frames`` subsampled
    frames: the feed-forwards (2 x 2 matmuls), the q/k/v/out projections, the scores against
    keys and relative positions and the weighted sum, the relative-position projection of the
    2T-1 positions (once per batch, not per row), the convolution module's pointwise matmuls
    and its depthwise taps (a multiply and an add each). Norms, softmax, activations and
    dropout are left out: ~2% of a d=144 block's count."""
    d, t = config.d_model, frames
    per_frame = 8 * d * config.ffn_dim + 14 * d * d + 2 * config.conv_kernel_size * d
    return rows * (t * per_frame + _attention_flops(d, t)) + 2.0 * (2 * t - 1) * d * d


def _attention_flops(d: int, t: int) -> float:
    """Per row: scores against keys, against the 2T-1 relative positions, weighted sum."""
    return 4.0 * t * t * d + 2.0 * t * (2 * t - 1) * d


def scanned_flops_uncounted(config: ConformerConfig, frames: int, rows: int, backward: bool) -> float:
    """FLOPs that XLA's cost analysis misses when the blocks are scanned (``scan_layers``): it
    counts a while loop's body once, so ``n_layers - 1`` blocks go uncounted (0 unrolled).

    ``backward``: the step also differentiates the blocks (weight and activation gradients,
    2 forwards' worth, plus what the remat policy recomputes: "full" the forward, "dots" the
    batched score einsums and the depthwise taps); False when the encoder only runs forward.
    """
    if not config.scan_layers:
        return 0.0
    forward = layer_flops(config, frames, rows)
    total = forward
    if backward:
        d, t = config.d_model, frames
        recompute = {"none": 0.0, "full": forward,
                     "dots": rows * (_attention_flops(d, t) + 2.0 * config.conv_kernel_size * d * t)}
        total = 3 * forward + recompute[config.remat_policy]
    return (config.n_layers - 1) * total


def init_variables(config: ConformerConfig, rng: jax.Array, frames: int = 64, *, ctc: bool = True) -> dict:
    """Unboxed variables (``params`` and, with batch norm, ``batch_stats``) for ``config``."""
    model = ConformerCTC(config) if ctc else ConformerEncoder(config)
    feats = jnp.zeros((1, frames, config.n_mels), jnp.float32)
    # jit: op-by-op init compiles every small op separately (tens of seconds on a busy CPU).
    return nn.unbox(jax.jit(model.init)(rng, feats, jnp.array([frames], jnp.int32)))


def save(path: str, config: ConformerConfig, variables: dict, *, features: dict, vocab: dict, **extra) -> None:
    """Writes a ``conformer_ctc`` model directory.

    ``config.json`` holds ``config`` (ConformerConfig), ``features`` (FeatureConfig fields)
    and ``vocab`` (``CharVocab.to_dict()``); ``params/`` holds ``variables`` (the dict
    with ``params`` and optionally ``batch_stats``).
    """
    model_dir.save_model_dir(path, KIND, config.to_dict(), dict(variables), features=features, vocab=vocab, **extra)


def load(path: str) -> tuple[ConformerConfig, dict, dict]:
    """Reads a ``conformer_ctc`` model directory -> ``(config, variables, meta)``.

    A directory whose tree is bare params (no ``params`` key at the top) is accepted and
    wrapped as ``{"params": tree}``.
    """
    meta, tree = model_dir.load_model_dir(path, KIND)
    config = ConformerConfig.from_dict(meta["config"])
    variables = tree if "params" in tree else {"params": tree}
    for key in ("features", "vocab"):
        if key not in meta:
            raise ValueError(f"{path}/config.json has no {key!r} entry; re-export the model with "
                             f"audiochat_jax.models.conformer.save(..., {key}=...)")
    return config, variables, meta


def param_count(variables: dict) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables.get("params", variables))))
