"""`python -m audiochat_jax.convert llama --src DIR --out DIR`: HF or Meta Llama -> model directory.

Sources (detected from the files in ``--src``):

* **HF**: ``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json`` with
  its shards (transformers ``save_pretrained``). Read with safetensors; no torch needed.
* **Meta**: ``params.json`` + ``consolidated.NN.pth`` tensor-parallel shards (Meta's llama
  repo). Read with ``torch.load(weights_only=True, mmap=True)``; shards are merged along the
  axis each fairscale layer was split on, and q/k rows are permuted from Meta's interleaved
  rotary layout into the rotate-half layout our model (like transformers) uses.

Memory: the output parameter arrays are allocated once, at their final dtype, and filled
tensor by tensor while the source is read file by file (memory-mapped), so a 70B conversion
holds one copy of the weights plus one source tensor -- never two copies.

Output: ``save_model_dir(out, "llama", LlamaConfig.to_dict(), params)``; params unrolled
(``layers_0`` ...) or, with ``--scan_layers``, stacked under ``layers`` [n_layers, ...].
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models.model_dir import save_model_dir
from audiochat_jax.models.llama import COMPUTE_DTYPES, DTYPES, LlamaConfig


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted; the message names the file and the fix."""


# ----------------------------------------------------------------------------- configs

def config_from_hf(hf: dict, where: str, **overrides) -> LlamaConfig:
    """LlamaConfig from a transformers ``config.json`` dict (checks it is a plain Llama-2)."""
    def need(key):
        if key not in hf:
            raise ConversionError(f"{where}: missing field {key!r}; is this a Llama config.json?")
        return hf[key]
    if hf.get("model_type", "llama") != "llama":
        raise ConversionError(f"{where}: model_type is {hf['model_type']!r}, expected 'llama'")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, ok) != ok:
            raise ConversionError(f"{where}: {key}={hf[key]!r} is not supported (Llama-2 uses {ok!r})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"{where}: rope scaling {rope!r} is not supported (Llama-2 uses none)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    heads = need("num_attention_heads")
    dim = need("hidden_size")
    if hf.get("head_dim") not in (None, dim // heads):
        raise ConversionError(f"{where}: head_dim={hf['head_dim']} != hidden_size/num_attention_heads")
    return LlamaConfig(
        vocab_size=need("vocab_size"), dim=dim, n_layers=need("num_hidden_layers"),
        n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
        ffn_dim=need("intermediate_size"), max_seq_len=hf.get("max_position_embeddings", 4096),
        rope_theta=float(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **overrides)


def config_from_meta(params: dict, shard0: dict, n_shards: int, where: str, **overrides) -> LlamaConfig:
    """LlamaConfig from Meta's ``params.json`` plus shapes in the first shard (Meta writes
    vocab_size=-1 and derives the FFN width from multiple_of/ffn_dim_multiplier)."""
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ConversionError(f"{where}: missing field {key!r}; is this a Meta Llama params.json?")
    emb = shard0.get("tok_embeddings.weight")
    w1 = shard0.get("layers.0.feed_forward.w1.weight")
    if emb is None or w1 is None:
        raise ConversionError(f"{where}: first shard lacks tok_embeddings / layers.0.feed_forward.w1; "
                              "not a Meta Llama checkpoint")
    return LlamaConfig(
        vocab_size=int(emb.shape[0]), dim=params["dim"], n_layers=params["n_layers"],
        n_heads=params["n_heads"], n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
        ffn_dim=int(w1.shape[0]) * n_shards, max_seq_len=params.get("max_seq_len", 4096),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        norm_eps=float(params.get("norm_eps", 1e-5)), tie_embeddings=False, **overrides)


# ----------------------------------------------------------------------------- layout

def _target_shapes(cfg: LlamaConfig) -> dict[tuple, tuple]:
    """Our parameter paths (layer tree as ``("layer", name...)``) -> shapes."""
    d, h, kvh, hd, f = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
    shapes = {("embedding",): (cfg.vocab_size, d), ("final_norm", "scale"): (d,)}
    if not cfg.tie_embeddings:
        shapes[("lm_head",)] = (d, cfg.vocab_size)
    layer = {("attn", "q"): (d, h, hd), ("attn", "k"): (d, kvh, hd), ("attn", "v"): (d, kvh, hd),
             ("attn", "o"): (h, hd, d), ("mlp", "gate"): (d, f), ("mlp", "up"): (d, f),
             ("mlp", "down"): (f, d), ("attn_norm", "scale"): (d,), ("mlp_norm", "scale"): (d,)}
    for k, s in layer.items():
        shapes[("layer",) + k] = s
    return shapes


# Our path -> the axis (in our layout) that Meta's tensor-parallel shards split.
_SPLIT_AXIS = {("embedding",): 1, ("lm_head",): 1, ("attn", "q"): 1, ("attn", "k"): 1,
               ("attn", "v"): 1, ("attn", "o"): 0, ("mlp", "gate"): 1, ("mlp", "up"): 1,
               ("mlp", "down"): 0, ("final_norm", "scale"): None, ("attn_norm", "scale"): None,
               ("mlp_norm", "scale"): None}


def _rule(name: str, meta: bool, where: str):
    """Maps one source tensor name to ``(layer or None, our path, kind)``; None = skip."""
    if meta:
        top = {"tok_embeddings.weight": (("embedding",), "copy"),
               "norm.weight": (("final_norm", "scale"), "copy"),
               "output.weight": (("lm_head",), "T")}
        per = {"attention.wq.weight": (("attn", "q"), "q"), "attention.wk.weight": (("attn", "k"), "k"),
               "attention.wv.weight": (("attn", "v"), "kv"), "attention.wo.weight": (("attn", "o"), "o"),
               "feed_forward.w1.weight": (("mlp", "gate"), "T"),
               "feed_forward.w3.weight": (("mlp", "up"), "T"),
               "feed_forward.w2.weight": (("mlp", "down"), "T"),
               "attention_norm.weight": (("attn_norm", "scale"), "copy"),
               "ffn_norm.weight": (("mlp_norm", "scale"), "copy")}
        layer_re, skip = r"layers\.(\d+)\.(.+)", ("rope.freqs",)
    else:
        top = {"model.embed_tokens.weight": (("embedding",), "copy"),
               "model.norm.weight": (("final_norm", "scale"), "copy"),
               "lm_head.weight": (("lm_head",), "T")}
        per = {"self_attn.q_proj.weight": (("attn", "q"), "kv"),
               "self_attn.k_proj.weight": (("attn", "k"), "kv"),
               "self_attn.v_proj.weight": (("attn", "v"), "kv"),
               "self_attn.o_proj.weight": (("attn", "o"), "o"),
               "mlp.gate_proj.weight": (("mlp", "gate"), "T"),
               "mlp.up_proj.weight": (("mlp", "up"), "T"),
               "mlp.down_proj.weight": (("mlp", "down"), "T"),
               "input_layernorm.weight": (("attn_norm", "scale"), "copy"),
               "post_attention_layernorm.weight": (("mlp_norm", "scale"), "copy")}
        layer_re, skip = r"model\.layers\.(\d+)\.(.+)", ()
    if name in skip or name.endswith("rotary_emb.inv_freq"):
        return None
    if name in top:
        return (None,) + top[name]
    m = re.fullmatch(layer_re, name)
    if m and m.group(2) in per:
        return (int(m.group(1)),) + per[m.group(2)]
    raise ConversionError(f"{where}: unexpected tensor {name!r}: not part of a Llama-2 checkpoint "
                          "(fine-tuned adapters or another architecture?)")


def _transform(w: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
    """Source [out, in] matrix -> our layout of (a shard of) ``shape``."""
    if kind == "copy":
        return w
    if kind == "T":
        return w.T
    if kind in ("q", "k"):  # Meta interleaved rotary rows -> rotate-half (transformers' permute)
        hd = shape[2]
        heads = w.shape[0] // hd
        w = w.reshape(heads, hd // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)
        kind = "kv"
    if kind == "kv":  # [heads*hd, dim] -> [dim, heads, hd]
        return w.T.reshape(w.shape[1], -1, shape[2])
    if kind == "o":  # [dim, heads*hd] -> [heads, hd, dim]
        return w.T.reshape(-1, shape[1], w.shape[0])
    raise AssertionError(kind)


class _Writer:
    """Pre-allocated output params, filled piece by piece; reports what was never written."""

    def __init__(self, cfg: LlamaConfig, scan_layers: bool):
        self.cfg, self.scan = cfg, scan_layers
        self.dtype = np.dtype(jnp.dtype(DTYPES[cfg.param_dtype]))
        self.shapes = _target_shapes(cfg)
        self.params: dict = {}
        self.filled: dict[tuple, int] = {}
        self.whole: dict[tuple, bool] = {}
        for path, shape in self.shapes.items():
            if path[0] != "layer":
                self._alloc(path, shape)
            elif scan_layers:
                self._alloc(("layers",) + path[1:], (cfg.n_layers,) + shape)
            else:
                for i in range(cfg.n_layers):
                    self._alloc((f"layers_{i}",) + path[1:], shape)

    def _alloc(self, path, shape):
        node = self.params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.empty(shape, self.dtype)

    def write(self, layer, path, piece, split, where):
        """Writes ``piece`` (our layout); ``split``: it is one TP shard, appended along the split axis."""
        axis = _SPLIT_AXIS[path] if split else None
        shape = self.shapes[(("layer",) + path) if layer is not None else path]
        if layer is not None and not 0 <= layer < self.cfg.n_layers:
            raise ConversionError(f"{where}: layer {layer} but the config has n_layers={self.cfg.n_layers}")
        fkey = (layer,) + path
        if axis is None:
            region, expect = (slice(None),) * len(shape), shape
        else:
            # Shards are written in order at a running offset, so uneven splits (an odd
            # vocabulary over 2 shards) work too; check_complete verifies the total.
            start = self.filled.get(fkey, 0)
            size = piece.shape[axis] if piece.ndim == len(shape) else -1
            if size < 0 or start + size > shape[axis]:
                raise ConversionError(f"{where}: {'.'.join(path)} (layer {layer}) shard of shape "
                                      f"{tuple(piece.shape)} overflows {shape} along axis {axis}; wrong "
                                      f"number of consolidated.*.pth files or mismatched params.json?")
            region = tuple(slice(start, start + size) if a == axis else slice(None)
                           for a in range(len(shape)))
            expect = tuple(size if a == axis else s for a, s in enumerate(shape))
        if tuple(piece.shape) != expect:
            raise ConversionError(f"{where}: {'.'.join(path)} (layer {layer}) has shape "
                                  f"{tuple(piece.shape)} in our layout, expected {expect} from the config")
        if layer is None:
            node, key = self.params, path
        elif self.scan:
            node, key, region = self.params["layers"], path, (layer,) + region
        else:
            node, key = self.params[f"layers_{layer}"], path
        for k in key[:-1]:
            node = node[k]
        node[key[-1]][region] = piece  # casts to the output dtype in place
        # filled = elements written along the split axis (or 1 for a whole tensor)
        self.filled[fkey] = self.filled.get(fkey, 0) + (1 if axis is None else piece.shape[axis])
        self.whole[fkey] = axis is None

    def check_complete(self, src):
        bad = []
        for path, shape in self.shapes.items():
            layers = range(self.cfg.n_layers) if path[0] == "layer" else [None]
            p = path[1:] if path[0] == "layer" else path
            for layer in layers:
                key = (layer,) + p
                got = self.filled.get(key, 0)
                if not got or (not self.whole[key] and got != shape[_SPLIT_AXIS[p]]):
                    bad.append(f"{'.'.join(p)}" + (f" (layer {layer})" if layer is not None else "")
                               + (f": {got} of {shape[_SPLIT_AXIS[p]]} rows" if got else ""))
        if bad:
            raise ConversionError(f"{src}: checkpoint is incomplete; missing or partial: {bad[:8]}"
                                  f"{' ...' if len(bad) > 8 else ''} ({len(bad)} in all)")


# ----------------------------------------------------------------------------- readers

def _hf_files(src: str) -> list[str]:
    index = os.path.join(src, "model.safetensors.index.json")
    single = os.path.join(src, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        missing = [f for f in files if not os.path.exists(os.path.join(src, f))]
        if missing:
            raise ConversionError(f"{index} lists shard files that are not in {src}: {missing}; "
                                  "download all shards")
        return [os.path.join(src, f) for f in files]
    if os.path.exists(single):
        return [single]
    raise ConversionError(f"{src}: no model.safetensors or model.safetensors.index.json "
                          "(.bin checkpoints: re-save with save_pretrained(safe_serialization=True))")


def convert_hf(src: str, *, param_dtype="bfloat16", dtype="auto", scan_layers=False):
    """Reads an HF checkpoint directory -> ``(LlamaConfig, params)`` (numpy arrays)."""
    from safetensors import safe_open
    cfg_path = os.path.join(src, "config.json")
    with open(cfg_path) as f:
        cfg = config_from_hf(json.load(f), cfg_path, param_dtype=param_dtype, dtype=dtype,
                             scan_layers=scan_layers)
    writer = _Writer(cfg, scan_layers)
    cpu = jax.devices("cpu")[0]
    for path in _hf_files(src):
        # framework="flax": the numpy reader has no bfloat16; pin the arrays to host memory.
        with jax.default_device(cpu), safe_open(path, framework="flax") as f:
            for name in f.keys():
                rule = _rule(name, False, path)
                if rule is None:
                    continue
                if cfg.tie_embeddings and rule[1] == ("lm_head",):
                    continue  # some tied checkpoints still store the (identical) head
                layer, target, kind = rule
                shape = writer.shapes[(("layer",) + target) if layer is not None else target]
                w = np.asarray(f.get_tensor(name))
                writer.write(layer, target, _transform(w, kind, shape), False, f"{path}:{name}")
                del w
    writer.check_complete(src)
    return cfg, writer.params


def _torch_to_numpy(t):
    import torch
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits via ml_dtypes
        return t.contiguous().view(torch.int16).numpy().view(jnp.bfloat16)
    return t.numpy()


def convert_meta(src: str, *, param_dtype="bfloat16", dtype="auto", scan_layers=False):
    """Reads a Meta checkpoint directory -> ``(LlamaConfig, params)`` (numpy arrays)."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError("Meta .pth checkpoints need torch: pip install -e '.[convert]'") from e
    shards = sorted(glob.glob(os.path.join(src, "consolidated.*.pth")))
    if not shards:
        raise ConversionError(f"{src}: params.json but no consolidated.NN.pth shard files")
    want = [os.path.join(src, f"consolidated.{i:02d}.pth") for i in range(len(shards))]
    if shards != want:
        raise ConversionError(f"{src}: shard files {[os.path.basename(s) for s in shards]} are not "
                              f"consolidated.00.pth .. consolidated.{len(shards) - 1:02d}.pth; a shard is missing")
    params_path = os.path.join(src, "params.json")
    with open(params_path) as f:
        meta_params = json.load(f)
    writer = None
    n = len(shards)
    for path in shards:
        try:  # mmap: tensors are paged in one at a time instead of the whole shard at once
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ConversionError(f"{path}: cannot be read by torch.load(weights_only=True): {e}") from e
        if writer is None:
            cfg = config_from_meta(meta_params, sd, n, params_path, param_dtype=param_dtype,
                                   dtype=dtype, scan_layers=scan_layers)
            writer = _Writer(cfg, scan_layers)
        for name, t in sd.items():
            rule = _rule(name, True, path)
            if rule is None:
                continue
            layer, target, kind = rule
            shape = writer.shapes[(("layer",) + target) if layer is not None else target]
            w = _torch_to_numpy(t)
            writer.write(layer, target, _transform(w, kind, shape), n > 1, f"{path}:{name}")
        del sd
        gc.collect()
    writer.check_complete(src)
    return writer.cfg, writer.params


def convert(src: str, out: str, *, param_dtype="bfloat16", dtype="auto", scan_layers=False):
    """Detects the source format, converts, writes the model directory; returns the config."""
    if not os.path.isdir(src):
        raise ConversionError(f"--src {src!r} is not a directory")
    if os.path.exists(os.path.join(src, "config.json")):
        cfg, params = convert_hf(src, param_dtype=param_dtype, dtype=dtype, scan_layers=scan_layers)
        fmt = "hf"
    elif os.path.exists(os.path.join(src, "params.json")):
        cfg, params = convert_meta(src, param_dtype=param_dtype, dtype=dtype, scan_layers=scan_layers)
        fmt = "meta"
    else:
        raise ConversionError(f"{src}: neither config.json (HF checkpoint) nor params.json (Meta "
                              "checkpoint) found; point --src at the checkpoint directory")
    save_model_dir(out, "llama", cfg.to_dict(), params, source=os.path.abspath(src), source_format=fmt)
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m audiochat_jax.convert llama",
        description="Convert an HF (config.json + safetensors) or Meta (params.json + "
                    "consolidated.NN.pth) Llama-2 checkpoint into a model directory "
                    "(config.json + orbax params) for audiochat_jax.")
    p.add_argument("--src", required=True, help="checkpoint directory (HF or Meta layout)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--param_dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="storage dtype of the converted params (Llama-2 ships bfloat16)")
    p.add_argument("--dtype", default="auto", choices=sorted(COMPUTE_DTYPES),
                   help="compute dtype recorded in the config (auto: bfloat16 on accelerators and on CPUs "
                        "with native bf16 dots, else float32; models/llama.py auto_compute_dtype)")
    p.add_argument("--scan_layers", action="store_true",
                   help="store layers stacked for scan-over-layers (fast compile at 70B)")
    args = p.parse_args(argv)
    try:
        cfg = convert(args.src, args.out, param_dtype=args.param_dtype, dtype=args.dtype,
                      scan_layers=args.scan_layers)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: llama dim={cfg.dim} layers={cfg.n_layers} heads={cfg.n_heads}/"
          f"{cfg.n_kv_heads} ffn={cfg.ffn_dim} vocab={cfg.vocab_size}")
    return 0
