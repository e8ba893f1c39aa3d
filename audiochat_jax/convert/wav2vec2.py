"""`python -m audiochat_jax.convert wav2vec2 --src HF_DIR --out DIR`: HF wav2vec2 / HuBERT -> model dir.

Sources: a transformers ``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ``Wav2Vec2ForPreTraining``,
``HubertModel`` or ``HubertForCTC`` directory: ``config.json`` + ``model.safetensors`` (or
sharded ``*.safetensors``; read with safetensors, no torch) or ``pytorch_model.bin``
(``torch.load(weights_only=True)``). ``preprocessor_config.json`` gives ``do_normalize``;
``vocab.json`` (CTC tokenizer) is kept as the vocabulary of a CTC head.

Output: a ``wav2vec2`` model directory (models/wav2vec2.py ``save``): Wav2Vec2Config and
``{"params": ...}`` of ``Wav2Vec2Encoder`` (or of ``Wav2Vec2CTC`` when the checkpoint has an
``lm_head`` and ``--head`` allows it). The positional conv's weight norm (g, v) is folded
into a plain kernel here. Every parameter of our model must be found with the right shape
and every checkpoint tensor must be used (pre-training-only tensors excepted): anything else
is an error naming the key.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import wav2vec2 as w2v
from audiochat_jax.models.wav2vec2 import Wav2Vec2Config


class ConversionError(ValueError):
    pass


# Tensors only used for self-supervised pre-training (quantizer, contrastive projections,
# HuBERT label embeddings): no counterpart in an encoder.
_IGNORED = re.compile(r"^(quantizer\.|project_q\.|project_hid\.|label_embeddings_concat|final_proj\.)")
_PREFIXES = ("wav2vec2.", "hubert.")


def config_from_hf(hf: dict, *, do_normalize: bool, head: str = "auto", has_lm_head: bool = False,
                   dtype: str = "float32", param_dtype: str = "float32", where: str = "config.json"
                   ) -> Wav2Vec2Config:
    """Wav2Vec2Config from a transformers wav2vec2 / hubert ``config.json`` dict."""
    model_type = hf.get("model_type")
    if model_type not in ("wav2vec2", "hubert"):
        raise ConversionError(f"{where}: model_type={model_type!r} is not supported; this converter reads "
                              f"'wav2vec2' and 'hubert' checkpoints")
    unsupported = {
        "add_adapter": (hf.get("add_adapter", False), "the output adapter convs are not implemented"),
        "adapter_attn_dim": (hf.get("adapter_attn_dim") is not None, "attention adapters (MMS) are not implemented"),
        "conv_pos_batch_norm": (hf.get("conv_pos_batch_norm", False), "a batch-normed position conv is not "
                                "implemented"),
    }
    for field, (bad, why) in unsupported.items():
        if bad:
            raise ConversionError(f"{where}: {field}={hf.get(field)!r}: {why}; convert a checkpoint without it")
    use_ctc = has_lm_head if head == "auto" else head == "ctc"
    if use_ctc and not has_lm_head:
        raise ConversionError(f"{where}: --head ctc but the checkpoint has no lm_head weights; use --head none")
    mask_time = float(hf.get("mask_time_prob", 0.0)) if hf.get("apply_spec_augment", True) else 0.0
    try:
        return Wav2Vec2Config(
            hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"], hidden_act=hf.get("hidden_act", "gelu"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), feat_extract_norm=hf.get("feat_extract_norm", "group"),
            feat_extract_activation=hf.get("feat_extract_activation", "gelu"),
            conv_dim=hf["conv_dim"], conv_stride=hf["conv_stride"], conv_kernel=hf["conv_kernel"],
            conv_bias=hf.get("conv_bias", False), num_conv_pos_embeddings=hf["num_conv_pos_embeddings"],
            num_conv_pos_embedding_groups=hf["num_conv_pos_embedding_groups"],
            do_stable_layer_norm=hf.get("do_stable_layer_norm", False),
            feat_proj_layer_norm=hf.get("feat_proj_layer_norm", True) if model_type == "hubert" else True,
            do_normalize=do_normalize,
            hidden_dropout=hf.get("hidden_dropout", 0.1), activation_dropout=hf.get("activation_dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.1), feat_proj_dropout=hf.get("feat_proj_dropout", 0.0),
            final_dropout=hf.get("final_dropout", 0.1), mask_time_prob=mask_time,
            mask_time_length=hf.get("mask_time_length", 10),
            ctc_vocab_size=hf["vocab_size"] if use_ctc else 0, dtype=dtype, param_dtype=param_dtype)
    except KeyError as e:
        raise ConversionError(f"{where}: required field {e.args[0]!r} is missing") from None
    except ValueError as e:
        raise ConversionError(f"{where}: {e}") from None


def read_state_dict(src: str) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory as float32 numpy arrays, wrapper prefix removed."""
    files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
    state = {}
    if files:
        from safetensors import safe_open
        cpu = jax.devices("cpu")[0]
        for path in files:
            # framework="flax" reads bf16/fp16 too (numpy has no bfloat16).
            with jax.default_device(cpu), safe_open(path, framework="flax") as f:
                for key in f.keys():
                    state[key] = np.asarray(f.get_tensor(key), np.float32)
    else:
        files = sorted(glob.glob(os.path.join(src, "pytorch_model*.bin")))
        if not files:
            raise ConversionError(f"{src}: no *.safetensors or pytorch_model*.bin weights next to config.json")
        import torch
        for path in files:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - re-raised with the file name
                raise ConversionError(f"{path}: cannot be read by torch.load(weights_only=True): {e}") from e
            state.update({k: v.float().numpy() for k, v in sd.items()})
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _fold_weight_norm(state: dict, base: str) -> np.ndarray:
    """Plain [out, in/groups, k] kernel of a ``weight_norm(conv, dim=2)`` conv (w = g * v / ||v||)."""
    pairs = ((f"{base}.parametrizations.weight.original0", f"{base}.parametrizations.weight.original1"),
             (f"{base}.weight_g", f"{base}.weight_v"))
    for g_key, v_key in pairs:
        if g_key in state and v_key in state:
            g, v = state.pop(g_key), state.pop(v_key)
            # dim=2: one norm per kernel tap, over output and input channels (torch norm_except_dim).
            norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=(0, 1), keepdims=True))
            return (v * (g / norm)).astype(np.float32)
    if f"{base}.weight" in state:
        return state.pop(f"{base}.weight")
    raise ConversionError(f"missing {base}.weight (or its weight-norm parametrization g/v)")


def params_from_state(cfg: Wav2Vec2Config, state: dict[str, np.ndarray], where: str) -> dict:
    """Our ``params`` tree from an HF state dict (consumed in place; leftovers are an error)."""
    state = dict(state)

    def take(key):
        if key not in state:
            raise ConversionError(f"{where}: missing tensor {key!r} required by the config")
        return state.pop(key)

    def dense(prefix):
        return {"kernel": take(prefix + ".weight").T, "bias": take(prefix + ".bias")}

    def norm(prefix):
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    fe = {}
    for i in range(len(cfg.conv_dim)):
        p = f"feature_extractor.conv_layers.{i}"
        fe[f"conv_{i}"] = {"kernel": take(p + ".conv.weight").transpose(2, 1, 0)}
        if cfg.conv_bias:
            fe[f"conv_{i}"]["bias"] = take(p + ".conv.bias")
        if cfg.feat_extract_norm == "layer" or i == 0:
            fe[f"norm_{i}"] = norm(p + ".layer_norm")
    params = {"feature_extractor": fe, "feature_projection": dense("feature_projection.projection")}
    if cfg.feat_proj_layer_norm:
        params["feature_projection_norm"] = norm("feature_projection.layer_norm")
    if cfg.mask_time_prob > 0:
        params["masked_spec_embed"] = take("masked_spec_embed")
    else:
        state.pop("masked_spec_embed", None)  # present for mask_feature_prob > 0; unused here
    try:
        pos_kernel = _fold_weight_norm(state, "encoder.pos_conv_embed.conv")
    except ConversionError as e:
        raise ConversionError(f"{where}: {e}") from None
    params["pos_conv_embed"] = {"conv": {"kernel": pos_kernel.transpose(2, 1, 0),
                                         "bias": take("encoder.pos_conv_embed.conv.bias")}}
    params["encoder_layer_norm"] = norm("encoder.layer_norm")
    h, d = cfg.num_heads, cfg.head_dim
    for i in range(cfg.num_layers):
        p = f"encoder.layers.{i}"
        attn = {}
        for name in ("q_proj", "k_proj", "v_proj"):
            w = dense(f"{p}.attention.{name}")
            attn[name] = {"kernel": w["kernel"].reshape(cfg.hidden_size, h, d), "bias": w["bias"].reshape(h, d)}
        w = dense(f"{p}.attention.out_proj")
        attn["out_proj"] = {"kernel": w["kernel"].reshape(h, d, cfg.hidden_size), "bias": w["bias"]}
        params[f"layers_{i}"] = {
            "attention": attn, "layer_norm": norm(p + ".layer_norm"),
            "final_layer_norm": norm(p + ".final_layer_norm"),
            "feed_forward": {"intermediate_dense": dense(p + ".feed_forward.intermediate_dense"),
                             "output_dense": dense(p + ".feed_forward.output_dense")}}
    if cfg.ctc_vocab_size > 0:
        params = {"encoder": params, "lm_head": dense("lm_head")}
    else:
        state.pop("lm_head.weight", None), state.pop("lm_head.bias", None)  # --head none: drop the head
    leftovers = sorted(k for k in state if not _IGNORED.match(k))
    if leftovers:
        raise ConversionError(f"{where}: tensors with no place in the model: {leftovers[:8]}"
                              f"{' ...' if len(leftovers) > 8 else ''}; is config.json the one of these weights?")
    return params


def _check_shapes(cfg: Wav2Vec2Config, params: dict, where: str) -> None:
    """Every leaf present with the shape ``model.init`` would give (and nothing else)."""
    expected = jax.eval_shape(lambda: w2v.init_variables(cfg, jax.random.key(0)))["params"]
    flat_e = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    flat_p = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    if flat_e.keys() != flat_p.keys():
        raise ConversionError(f"{where}: parameter names differ from the model's: missing "
                              f"{sorted(flat_e.keys() - flat_p.keys())}, extra {sorted(flat_p.keys() - flat_e.keys())}")
    bad = [f"{k}: checkpoint {flat_p[k]} vs model {flat_e[k]}" for k in flat_e if flat_e[k] != flat_p[k]]
    if bad:
        raise ConversionError(f"{where}: shape mismatch (config.json does not describe these weights): "
                              + "; ".join(bad[:5]))


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def convert_hf(src: str, *, head: str = "auto", do_normalize: str = "auto", dtype: str = "float32",
               param_dtype: str = "float32", group_norm_masked: bool = True) -> tuple[Wav2Vec2Config, dict, dict]:
    """HF checkpoint directory -> ``(config, variables, extra)`` (``extra`` goes to config.json)."""
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConversionError(f"{src}: no config.json; point --src at a transformers checkpoint directory")
    hf = _read_json(cfg_path)
    if do_normalize == "auto":
        pre = os.path.join(src, "preprocessor_config.json")
        if not os.path.isfile(pre):
            raise ConversionError(f"{src}: no preprocessor_config.json to read do_normalize from; pass "
                                  f"--do_normalize true (wav2vec2 / most HuBERT checkpoints) or false")
        norm = bool(_read_json(pre).get("do_normalize", True))
    else:
        norm = do_normalize == "true"
    state = read_state_dict(src)
    cfg = config_from_hf(hf, do_normalize=norm, head=head, has_lm_head="lm_head.weight" in state,
                         dtype=dtype, param_dtype=param_dtype, where=cfg_path)
    cfg = Wav2Vec2Config.from_dict({**cfg.to_dict(), "group_norm_masked": group_norm_masked})
    params = params_from_state(cfg, state, src)
    _check_shapes(cfg, params, src)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=jnp.dtype(cfg.param_dtype)), params)
    extra = {"source": os.path.abspath(src), "source_model_type": hf["model_type"]}
    if cfg.ctc_vocab_size > 0:
        extra["blank_id"] = int(hf.get("pad_token_id", 0))  # HF CTC uses the pad token as blank
        vocab_path = os.path.join(src, "vocab.json")
        if os.path.isfile(vocab_path):
            vocab = _read_json(vocab_path)
            vocab = next(iter(vocab.values())) if vocab and isinstance(next(iter(vocab.values())), dict) else vocab
            extra["vocab"] = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return cfg, {"params": params}, extra


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m audiochat_jax.convert wav2vec2",
        description="Convert a transformers Wav2Vec2Model / Wav2Vec2ForCTC / HubertModel checkpoint directory "
                    "into a 'wav2vec2' model directory (config.json + orbax params).")
    p.add_argument("--src", required=True, help="HF checkpoint directory (config.json + *.safetensors or "
                                                "pytorch_model.bin)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--head", choices=("auto", "none", "ctc"), default="auto",
                   help="keep the CTC lm_head (auto: when the checkpoint has one)")
    p.add_argument("--do_normalize", choices=("auto", "true", "false"), default="auto",
                   help="per-utterance waveform normalisation (auto: from preprocessor_config.json)")
    p.add_argument("--dtype", default="float32", help="compute dtype stored in the config (e.g. bfloat16)")
    p.add_argument("--param_dtype", default="float32", help="dtype of the saved parameters")
    p.add_argument("--group_norm_stats_over_padding", action="store_true",
                   help="reproduce HF's padded-batch GroupNorm statistics instead of per-utterance ones")
    args = p.parse_args(argv)
    try:
        cfg, variables, extra = convert_hf(args.src, head=args.head, do_normalize=args.do_normalize,
                                           dtype=args.dtype, param_dtype=args.param_dtype,
                                           group_norm_masked=not args.group_norm_stats_over_padding)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    w2v.save(args.out, cfg, variables, **extra)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))
    print(f"wrote {args.out}: {'Wav2Vec2CTC' if cfg.ctc_vocab_size else 'Wav2Vec2Encoder'} "
          f"({extra['source_model_type']}), {n / 1e6:.2f}M params, {cfg.num_layers} layers x {cfg.hidden_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
