"""`python -m audiochat_jax.convert conformer --src PATH --out DIR`: Parakeet / NeMo CTC -> model dir.

Sources:
  * an HF ``ParakeetForCTC`` directory: ``config.json`` + ``model.safetensors`` (or sharded
    ``*.safetensors``); optional ``tokenizer.json`` (vocabulary) and
    ``preprocessor_config.json`` (features). Read with safetensors/numpy, no torch.
  * a NeMo ``.nemo`` archive (tar, optionally gzip): ``model_config.yaml`` +
    ``model_weights.ckpt`` (``torch.load(weights_only=True)``) + the tokenizer ``.model``
    for BPE models, or ``decoder.vocabulary`` for character models.

Output: a ``conformer_ctc`` model directory (models/conformer.py ``save``): ConformerConfig,
FeatureConfig fields, the CTC vocabulary (blank last) and the variables.

Weights are mapped in NeMo's layout, which our module names follow: an HF key is first
renamed to its NeMo key (the inverse of transformers' ``convert_nemo_to_hf.py`` table),
then every variable of our model is looked up by name, transposed to Flax's layout and
shape-checked. Unused or missing keys are errors, not warnings.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import sys
import tarfile
import tempfile

import jax
import numpy as np

from audiochat_jax.models import conformer
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.text.char_vocab import CharVocab

# HF Parakeet key -> NeMo key (inverse of transformers' NEMO_TO_HF_WEIGHT_MAPPING).
_HF_TO_NEMO = (
    (r"^encoder\.subsampling\.layers\.", "encoder.pre_encode.conv."),
    (r"^encoder\.subsampling\.linear\.", "encoder.pre_encode.out."),
    (r"\.conv\.norm\.", ".conv.batch_norm."),
    (r"^ctc_head\.", "decoder.decoder_layers.0."),
    (r"\.q_proj\.", ".linear_q."),
    (r"\.k_proj\.", ".linear_k."),
    (r"\.v_proj\.", ".linear_v."),
    (r"\.o_proj\.", ".linear_out."),
    (r"\.relative_k_proj\.", ".linear_pos."),
    (r"\.bias_([uv])$", r".pos_bias_\1"),
)
# Checkpoint entries with no counterpart here: feature-extractor buffers, BN step counters,
# positional tables (recomputed).
_IGNORED = re.compile(r"(^preprocessor\.|num_batches_tracked$|^encoder\.pos_enc\.|^encoder\.encode_positions\.)")


def hf_key_to_nemo(key: str) -> str:
    for pattern, repl in _HF_TO_NEMO:
        key = re.sub(pattern, repl, key)
    return key


def _nemo_key(path: tuple[str, ...]) -> str:
    """Our variable path (collection first) -> NeMo state-dict key."""
    collection, *names = path
    names = [re.sub(r"^(layers|conv)_(\d+)$", r"\1.\2", n) for n in names]
    if names[0] == "ctc_head":
        names = ["decoder", "decoder_layers", "0"] + names[1:]
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    names[-1] = leaf.get(names[-1], names[-1])
    return ".".join(names)


def _to_flax(w: np.ndarray, target: tuple[int, ...], key: str) -> np.ndarray:
    """A torch-layout tensor -> Flax layout of shape ``target``."""
    w = np.asarray(w, np.float32)
    if w.ndim == 3 and w.shape[-1] == 1 and len(target) == 2:  # 1x1 Conv1d == Linear
        w = w[..., 0]
    if len(target) == 4:                       # Conv2d [out, in/g, kh, kw] -> [kh, kw, in/g, out]
        w = w.transpose(2, 3, 1, 0)
    elif key.endswith("depthwise_conv.weight"):  # Conv1d [d, 1, K] -> [K, 1, d]
        w = w.transpose(2, 1, 0)
    elif key.endswith(".weight") and len(target) >= 2 and "pos_bias" not in key:
        w = w.T                                # Linear [out, in] -> [in, out] (then split heads)
    if w.size != int(np.prod(target)):
        raise ValueError(f"{key}: checkpoint shape {w.shape} does not fit our {target}; the config "
                         f"read from the checkpoint disagrees with its weights")
    return w.reshape(target)


def state_to_variables(state: dict[str, np.ndarray], config: ConformerConfig, src: str) -> dict:
    """NeMo-keyed state dict -> our variables ``{"params": ..., ["batch_stats": ...]}``."""
    abstract = jax.eval_shape(lambda: conformer.init_variables(config, jax.random.key(0), frames=16))
    used, flat = set(), []
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        names = tuple(p.key for p in path)
        key = _nemo_key(names)
        if key not in state:
            raise ValueError(f"{src}: missing weight {key!r} (needed for {'/'.join(names)}); is this a "
                             f"conformer CTC checkpoint with the architecture its config describes?")
        used.add(key)
        flat.append(_to_flax(state[key], leaf.shape, key))
    unused = sorted(k for k in state if k not in used and not _IGNORED.search(k))
    if unused:
        raise ValueError(f"{src}: {len(unused)} weights have no place in the converted model, e.g. "
                         f"{unused[:6]}; the checkpoint's architecture is not supported")
    treedef = jax.tree_util.tree_structure(abstract)
    return jax.tree_util.tree_unflatten(treedef, flat)


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise ValueError(f"{where}: required field {key!r} missing")
    return d[key]


# ---------------------------------------------------------------------------------------
# HF Parakeet
# ---------------------------------------------------------------------------------------
def _hf_config(cfg: dict, where: str) -> ConformerConfig:
    if cfg.get("model_type") != "parakeet_ctc":
        raise ValueError(f"{where}: model_type={cfg.get('model_type')!r}, expected 'parakeet_ctc' "
                         f"(ParakeetForCTC); RNN-T/TDT heads are not supported")
    enc = _need(cfg, "encoder_config", where)
    vocab_size = _need(cfg, "vocab_size", where)
    if cfg.get("pad_token_id", vocab_size - 1) != vocab_size - 1:
        raise ValueError(f"{where}: pad_token_id (the CTC blank) is {cfg['pad_token_id']}, expected the last "
                         f"class {vocab_size - 1}")
    if enc.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"{where}: encoder_config.hidden_act={enc['hidden_act']!r}; only silu is supported")
    if enc.get("subsampling_conv_stride", 2) != 2:
        raise ValueError(f"{where}: encoder_config.subsampling_conv_stride must be 2")
    return ConformerConfig(
        n_mels=enc.get("num_mel_bins", 80), d_model=enc["hidden_size"], n_layers=enc["num_hidden_layers"],
        n_heads=enc["num_attention_heads"], ffn_dim=enc["intermediate_size"],
        conv_kernel_size=enc.get("conv_kernel_size", 9), subsampling="dw_striding",
        subsampling_factor=enc.get("subsampling_factor", 8),
        subsampling_channels=enc.get("subsampling_conv_channels", 256),
        subsampling_kernel_size=enc.get("subsampling_conv_kernel_size", 3),
        xscaling=bool(enc.get("scale_input", True)), conv_norm="batch_norm",
        use_bias=bool(enc.get("attention_bias", True)), conv_bias=bool(enc.get("convolution_bias", True)),
        vocab_size=vocab_size, dropout=float(enc.get("dropout", 0.1)),
        attention_dropout=float(enc.get("attention_dropout", 0.1)))


def _hf_features(src: str, n_mels: int) -> dict:
    path = os.path.join(src, "preprocessor_config.json")
    if not os.path.exists(path):
        print(f"note: {path} not found; using the Parakeet feature defaults with n_mels={n_mels}", file=sys.stderr)
        return {"n_mels": n_mels}
    with open(path) as f:
        p = json.load(f)
    sr = p.get("sampling_rate", 16000)
    return {"sample_rate": sr, "n_mels": p.get("feature_size", n_mels), "n_fft": p.get("n_fft", 512),
            "win_ms": 1000.0 * p.get("win_length", 400) / sr, "hop_ms": 1000.0 * p.get("hop_length", 160) / sr,
            "preemphasis": p.get("preemphasis", 0.97)}


def _hf_vocab(src: str, vocab_size: int) -> CharVocab | None:
    path = os.path.join(src, "tokenizer.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    id_to_token = {}
    vocab = tok.get("model", {}).get("vocab", [])
    if isinstance(vocab, dict):                      # BPE / WordPiece: {token: id}
        id_to_token.update({i: t for t, i in vocab.items()})
    else:                                            # Unigram: [[piece, score], ...]
        id_to_token.update({i: entry[0] for i, entry in enumerate(vocab)})
    for added in tok.get("added_tokens", []):
        id_to_token.setdefault(added["id"], added["content"])
    missing = [i for i in range(vocab_size - 1) if i not in id_to_token]
    if missing:
        raise ValueError(f"{path}: no token for ids {missing[:5]} (model has {vocab_size - 1} non-blank classes)")
    return CharVocab([id_to_token[i] for i in range(vocab_size - 1)], kind="pieces")


def load_hf(src: str) -> tuple[ConformerConfig, dict, dict, CharVocab | None]:
    from safetensors.numpy import load_file
    cfg_path = os.path.join(src, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: --src must be an HF ParakeetForCTC directory "
                                f"(config.json + *.safetensors) or a .nemo file")
    with open(cfg_path) as f:
        config = _hf_config(json.load(f), cfg_path)
    files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors weights (pytorch_model.bin is not read; re-save "
                                f"with save_pretrained(safe_serialization=True))")
    state = {}
    for file in files:
        state.update({hf_key_to_nemo(k): v for k, v in load_file(file).items()})
    variables = state_to_variables(state, config, src)
    return config, variables, _hf_features(src, config.n_mels), _hf_vocab(src, config.vocab_size)


# ---------------------------------------------------------------------------------------
# NeMo .nemo
# ---------------------------------------------------------------------------------------
def _nemo_config(cfg: dict, where: str) -> ConformerConfig:
    enc, dec = _need(cfg, "encoder", where), _need(cfg, "decoder", where)
    checks = {
        "self_attention_model": (enc.get("self_attention_model", "rel_pos"), "rel_pos"),
        "untie_biases": (enc.get("untie_biases", True), True),
        "causal_downsampling": (enc.get("causal_downsampling", False), False),
        "att_context_size": (list(enc.get("att_context_size", [-1, -1])), [-1, -1]),
    }
    for key, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"{where}: encoder.{key}={got!r} is not supported (only {want!r})")
    d_model = _need(enc, "d_model", where)
    channels = enc.get("subsampling_conv_channels", -1)
    use_bias = bool(enc.get("use_bias", True))  # NeMo applies it to linear AND conv layers
    num_classes = dec.get("num_classes", len(dec.get("vocabulary", [])))
    return ConformerConfig(
        n_mels=_need(enc, "feat_in", where), d_model=d_model, n_layers=_need(enc, "n_layers", where),
        n_heads=enc.get("n_heads", 4), ffn_dim=int(d_model * enc.get("ff_expansion_factor", 4)),
        conv_kernel_size=enc.get("conv_kernel_size", 31), subsampling=enc.get("subsampling", "striding"),
        subsampling_factor=enc.get("subsampling_factor", 4),
        subsampling_channels=d_model if channels in (-1, None) else channels,
        xscaling=bool(enc.get("xscaling", True)), conv_norm=enc.get("conv_norm_type", "batch_norm"),
        use_bias=use_bias, conv_bias=use_bias, vocab_size=num_classes + 1,
        dropout=float(enc.get("dropout", 0.1)), attention_dropout=float(enc.get("dropout_att", 0.1)))


def _nemo_features(pre: dict, where: str) -> dict:
    if pre.get("frame_splicing", 1) != 1 or pre.get("window", "hann") != "hann" or pre.get("log", True) is not True:
        raise ValueError(f"{where}: preprocessor settings (frame_splicing/window/log) differ from the log-mel "
                         f"front end implemented in audio/features.py")
    sr = pre.get("sample_rate", 16000)
    normalize = pre.get("normalize", "per_feature")
    feats = {"sample_rate": sr, "n_mels": pre.get("features", 80), "n_fft": pre.get("n_fft", 512),
             "win_ms": 1000.0 * pre.get("window_size", 0.025), "hop_ms": 1000.0 * pre.get("window_stride", 0.01),
             "preemphasis": pre.get("preemph", pre.get("preemphasis", 0.97)),
             "normalize": "per_feature" if normalize == "per_feature" else "none",
             "fmin": float(pre.get("lowfreq", 0.0) or 0.0)}
    if pre.get("highfreq") is not None:
        feats["fmax"] = float(pre["highfreq"])
    if "log_zero_guard_value" in pre and isinstance(pre["log_zero_guard_value"], (int, float)):
        feats["log_guard"] = float(pre["log_zero_guard_value"])
    return feats  # dither is a training-time setting: inference uses none


def load_nemo(src: str) -> tuple[ConformerConfig, dict, dict, CharVocab]:
    import yaml
    try:
        import torch
    except ImportError:
        raise ValueError(f"{src}: reading .nemo weights needs torch (CPU build): "
                         f"pip install 'audiochat_jax[convert]'") from None
    try:
        tar = tarfile.open(src, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{src}: not a readable .nemo archive (tar): {e}") from None
    with tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}

        def read(name):
            if name not in members:
                raise ValueError(f"{src}: archive has no {name!r} (found {sorted(members)})")
            return tar.extractfile(members[name]).read()

        cfg = yaml.safe_load(read("model_config.yaml"))
        config = _nemo_config(cfg, f"{src}:model_config.yaml")
        state = torch.load(io.BytesIO(read("model_weights.ckpt")), map_location="cpu", weights_only=True)
        state = {k: v.float().numpy() for k, v in state.items()}
        vocab = None
        tok = cfg.get("tokenizer") or {}
        if tok.get("model"):
            name = os.path.basename(str(tok["model"]).removeprefix("nemo:"))
            with tempfile.TemporaryDirectory() as tmp:
                spm_path = os.path.join(tmp, name)
                with open(spm_path, "wb") as f:
                    f.write(read(name))
                vocab = CharVocab.from_sentencepiece(spm_path)
        elif cfg["decoder"].get("vocabulary"):
            labels = list(cfg["decoder"]["vocabulary"])
            vocab = CharVocab(labels, kind="chars" if all(len(t) == 1 for t in labels) else "pieces")
        if vocab is None or vocab.size != config.vocab_size:
            raise ValueError(f"{src}: vocabulary ({None if vocab is None else vocab.size - 1} tokens) does not match "
                             f"decoder.num_classes={config.vocab_size - 1}")
    variables = state_to_variables(state, config, src)
    return config, variables, _nemo_features(cfg.get("preprocessor", {}), f"{src}:model_config.yaml"), vocab


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def convert(src: str, out: str, vocab_path: str | None = None, *, scan_layers: bool = False
            ) -> tuple[ConformerConfig, CharVocab]:
    """Converts ``src`` (HF dir or .nemo) into the model directory ``out``; ``scan_layers``
    marks it to run its blocks scanned (the parameters are the same either way)."""
    if os.path.isdir(src):
        config, variables, features, vocab = load_hf(src)
    elif os.path.isfile(src):
        config, variables, features, vocab = load_nemo(src)
    else:
        raise FileNotFoundError(f"--src {src}: no such file or directory")
    if vocab_path:
        vocab = CharVocab.load(vocab_path)
    if vocab is None:
        raise ValueError(f"{src}: no vocabulary found (tokenizer.json); pass --vocab FILE (.model or JSON list)")
    if vocab.size != config.vocab_size:
        raise ValueError(f"vocabulary has {vocab.size - 1} tokens + blank but the model has {config.vocab_size} "
                         f"classes")
    config = config.replace(scan_layers=scan_layers)
    conformer.save(out, config, variables, features=features, vocab=vocab.to_dict(), source=os.path.abspath(src))
    return config, vocab


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audiochat_jax.convert conformer",
        description="Convert an HF ParakeetForCTC directory or a NeMo .nemo CTC conformer into a "
                    "conformer_ctc model directory (orbax params + config.json with features and vocabulary).")
    parser.add_argument("--src", required=True, help="HF directory (config.json + *.safetensors) or .nemo file")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--vocab", help="vocabulary override: sentencepiece .model or JSON token list (blank excluded)")
    parser.add_argument("--scan_layers", action="store_true",
                        help="run the blocks as one scanned block (compiles ~3x faster at 16 blocks; same "
                             "parameters and outputs; set scan_layers in config.json to change it later)")
    args = parser.parse_args(argv)
    try:
        config, vocab = convert(args.src, args.out, args.vocab, scan_layers=args.scan_layers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: conformer d_model={config.d_model} layers={config.n_layers} "
          f"vocab={vocab.size} (blank={vocab.blank_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
