"""Shared test helpers: a tiny random ``transformers.ParakeetForCTC`` and a ``.nemo`` archive
assembled from the same weights in NeMo's key layout.

The NeMo layout is written here from NeMo's module names (``ConformerEncoder``:
``pre_encode.conv.N`` / ``pre_encode.out``, ``layers.N.{norm_feed_forward1, feed_forward1.linear1,
norm_self_att, self_attn.linear_q/k/v/out/pos, self_attn.pos_bias_u/v, norm_conv,
conv.pointwise_conv1, conv.depthwise_conv, conv.batch_norm, conv.pointwise_conv2,
norm_feed_forward2, feed_forward2, norm_out}``; ``ConvASRDecoder``: ``decoder.decoder_layers.0``),
i.e. transformers' ``convert_nemo_to_hf.py`` table read backwards — independently of the
converter's own table, so a wrong name on either side fails the NeMo test.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np

PIECES = ["<unk>", "▁the", "▁a", "s", "t", "▁cat", "e", "d", "▁o", "n", "g"]  # 11 + blank = 12
CHARS = list(" abcdefghij")                                             # 11 + blank = 12

# NeMo name fragments -> HF name fragments (transformers' convert_nemo_to_hf.py, in its order).
_NEMO_TO_HF = [
    ("encoder.pre_encode.conv.", "encoder.subsampling.layers."),
    ("encoder.pre_encode.out.", "encoder.subsampling.linear."),
    (".conv.batch_norm.", ".conv.norm."),
    ("decoder.decoder_layers.0.", "ctc_head."),
    ("linear_k", "k_proj"),
    ("linear_v", "v_proj"),
    ("linear_out", "o_proj"),
    ("linear_q", "q_proj"),
    ("pos_bias_u", "bias_u"),
    ("pos_bias_v", "bias_v"),
    ("linear_pos", "relative_k_proj"),
]


def tiny_parakeet(*, n_mels=16, d_model=32, n_layers=2, n_heads=4, ffn=64, kernel=5, factor=8, channels=8,
                  vocab_size=12, seed=0):
    """A random ParakeetForCTC in eval mode with non-trivial batch-norm statistics and biases."""
    import torch
    import transformers
    torch.manual_seed(seed)
    enc = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
               intermediate_size=ffn, conv_kernel_size=kernel, subsampling_factor=factor,
               subsampling_conv_channels=channels, num_mel_bins=n_mels)
    cfg = transformers.ParakeetCTCConfig(vocab_size=vocab_size, encoder_config=enc, pad_token_id=vocab_size - 1)
    model = transformers.ParakeetForCTC(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # HF's init (std 0.02) leaves the logits almost independent of the input, and biases
            # at 0 / norms at 1: re-draw everything at unit-variance scale so every term matters.
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            elif "bias_" in name:  # pos_bias_u / pos_bias_v [heads, head_dim]
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand_like(buf))
    return model


def save_hf(model, path, *, pieces=PIECES):
    """save_pretrained + a Unigram tokenizer.json + preprocessor_config.json."""
    import tokenizers
    import transformers
    model.save_pretrained(path)
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tok.save(os.path.join(path, "tokenizer.json"))
    n_mels = model.config.encoder_config.num_mel_bins
    transformers.ParakeetFeatureExtractor(feature_size=n_mels).save_pretrained(path)
    return str(path)


def nemo_state_dict(model) -> dict:
    """The HF model's weights under NeMo's key names (+ the featurizer buffers NeMo saves)."""
    import torch
    hf = model.state_dict()
    out = {}
    for key, value in hf.items():
        nemo = key
        for nemo_part, hf_part in reversed(_NEMO_TO_HF):
            nemo = nemo.replace(hf_part, nemo_part)
        out[nemo] = value.clone()
    n_mels = model.config.encoder_config.num_mel_bins
    out["preprocessor.featurizer.window"] = torch.hann_window(400)
    out["preprocessor.featurizer.fb"] = torch.rand(1, n_mels, 257)
    return out


def nemo_model_config(model, labels=CHARS) -> dict:
    enc = model.config.encoder_config
    return {
        "sample_rate": 16000,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": enc.num_mel_bins, "n_fft": 512,
                         "log": True, "frame_splicing": 1, "dither": 1e-5, "pad_to": 0, "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": enc.num_mel_bins,
                    "feat_out": -1, "n_layers": enc.num_hidden_layers, "d_model": enc.hidden_size,
                    "subsampling": "dw_striding", "subsampling_factor": enc.subsampling_factor,
                    "subsampling_conv_channels": enc.subsampling_conv_channels, "causal_downsampling": False,
                    "ff_expansion_factor": enc.intermediate_size // enc.hidden_size,
                    "self_attention_model": "rel_pos", "n_heads": enc.num_attention_heads,
                    "att_context_size": [-1, -1], "xscaling": enc.scale_input, "untie_biases": True,
                    "pos_emb_max_len": 5000, "conv_kernel_size": enc.conv_kernel_size,
                    "conv_norm_type": "batch_norm", "dropout": 0.1, "dropout_pre_encoder": 0.1,
                    "dropout_emb": 0.0, "dropout_att": 0.1},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": enc.hidden_size,
                    "num_classes": len(labels), "vocabulary": list(labels)},
    }


def save_nemo(model, path, *, labels=CHARS, state=None, config=None) -> str:
    """A ``.nemo`` tar: ./model_config.yaml + ./model_weights.ckpt (torch.save of the state dict)."""
    import torch
    import yaml
    state = nemo_state_dict(model) if state is None else state
    config = nemo_model_config(model, labels) if config is None else config
    buf = io.BytesIO()
    torch.save(state, buf)
    files = {"./model_config.yaml": yaml.safe_dump(config).encode(), "./model_weights.ckpt": buf.getvalue()}
    with tarfile.open(path, "w:") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def random_features(lengths, n_mels, seed=0) -> np.ndarray:
    """[batch, max(lengths), n_mels] float32 normal features, zero past each length."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    feats = rng.standard_normal((len(lengths), t, n_mels)).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0
    return feats


def hf_logits(model, features: np.ndarray, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits [batch, out_frames, vocab] and out lengths [batch] from transformers."""
    import torch
    mask = np.arange(features.shape[1])[None, :] < np.asarray(lengths)[:, None]
    with torch.no_grad():
        out = model(input_features=torch.from_numpy(features), attention_mask=torch.from_numpy(mask))
        out_mask = model._get_output_attention_mask(torch.from_numpy(mask), target_length=out.logits.shape[1])
    return out.logits.numpy(), out_mask.sum(-1).numpy()


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
