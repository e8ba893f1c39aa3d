"""Accelerators and slices the paper/pod configs target, and the alignment config they share.

``CHIPS``: per-device peak dense bf16 FLOP/s and HBM, with the page that states them — what
``python -m audiochat_jax.plan --chip`` divides by, and what ``config.peak_flops`` (MFU) is.
``SLICES``: a named slice -> its chip, JAX device count and host count. A JAX device is one
chip on v4/v5p (megacore: the two TensorCores are one device; a "v4-32" counts 32 cores =
16 chips) and on v5e (one core per chip; "v5e-256" = 256 chips), and one GPU on H100.

``align_config(size, slice, ...)`` is the body of configs/llama2_{7b,13b,70b}_chat.py: the
trainer's align config (train/align.py) with the LLM, mesh, batch and input sized for
LibriSpeech / MLS English, plus a ``plan`` section (the conformer's shape and the chat
template's lengths) that ``audiochat_jax.plan`` compiles the step with.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_bf16_flops: float   # dense (no sparsity) bf16 FLOP/s per JAX device
    hbm_gib: float           # memory per JAX device
    source: str


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32, "https://cloud.google.com/tpu/docs/v4 (275 TFLOPS bf16, 32 GiB HBM2 per chip)"),
    "v5e": Chip("TPU v5e", 197e12, 16, "https://cloud.google.com/tpu/docs/v5e (197 TFLOPS bf16, 16 GiB HBM2 per chip)"),
    "v5p": Chip("TPU v5p", 459e12, 95, "https://cloud.google.com/tpu/docs/v5p (459 TFLOPS bf16, 95 GiB HBM2e per chip)"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80,
                 "https://www.nvidia.com/en-us/data-center/h100/ (989 TFLOPS dense bf16 = the 1,979 "
                 "'with sparsity' figure / 2; 80 GB HBM3)"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    chip: str          # key of CHIPS
    devices: int       # JAX devices (chips / GPUs)
    hosts: int         # processes (TPU VM workers / GPU nodes)
    accelerator: str   # gcloud --accelerator-type, or the GPU node shape


SLICES = {
    "v4-32": Slice("v4", 16, 4, "v4-32"),
    "v5p-128": Slice("v5p", 64, 16, "v5p-128"),
    "v5e-256": Slice("v5e", 256, 64, "v5litepod-256"),
    "8xh100": Slice("h100", 8, 1, "1 node x 8 H100"),
    "2x8xh100": Slice("h100", 16, 2, "2 nodes x 8 H100"),
}

# Llama-2 chat template pieces around the user content without a system prompt, in Llama-2's
# sentencepiece: "<s>" "▁[" "INST" "]" before, "▁[" "/" "INST" "]" after. A system prompt
# adds its tokens plus "<<SYS>>"/"<</SYS>>" markup to the prefix: raise plan.prefix_tokens.
CHAT_PREFIX_TOKENS, CHAT_SUFFIX_TOKENS = 4, 4


def sibling_config(config_file: str, name: str, arg=None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of another file in the same configs/ directory (configs are files
    loaded by path, not a package, so one config reads another this way)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(f"_config_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def parse_arg(arg, slices, default: str, where: str) -> str:
    """The slice named by a config ``arg`` (``None``/"" = ``default``); unknown names fail."""
    arg = arg or default
    if arg not in slices:
        raise ValueError(f"{where}:{arg}: unknown slice; use one of {sorted(slices)}")
    return arg


def align_config(config_file: str, size: str, slice_name: str, mesh_shape: tuple[int, int, int],
                 per_device_batch: int, remat_policy: str) -> ml_collections.ConfigDict:
    """The full align config for Llama-2-``size``-chat on ``slice_name`` (see module docstring).

    ``mesh_shape`` (data, fsdp, tensor) must multiply to the slice's devices; the global batch
    is ``per_device_batch * data * fsdp`` (tensor-parallel devices share rows).
    """
    from audiochat_jax.models.llama import LLAMA2_SIZES, LlamaConfig
    from audiochat_jax.train import align

    sl = SLICES[slice_name]
    data, fsdp, tensor = mesh_shape
    if data * fsdp * tensor != sl.devices:
        raise ValueError(f"{config_file}: mesh {mesh_shape} has {data * fsdp * tensor} devices, "
                         f"slice {slice_name} has {sl.devices}")
    c = align.full_config()
    # The frozen LLM's numerics and layout. The weights come from align.llm_dir (converted
    # with `--scan_layers`); dtype, remat, attention and the scanned/unrolled layout apply on
    # load through the align overrides below (so `--config.llm.scan_layers=false` unrolls a
    # stacked checkpoint's layers).
    c.llm = ml_collections.ConfigDict(LlamaConfig(
        **LLAMA2_SIZES[size], dtype="bfloat16", param_dtype="bfloat16", remat_policy=remat_policy,
        scan_layers=True, attention_impl="xla").to_dict())
    c.mesh_shape = tuple(mesh_shape)
    c.batch_size = per_device_batch * data * fsdp
    c.total_steps = 20000
    c.log_every, c.eval_every = 50, 2000
    c.peak_flops = CHIPS[sl.chip].peak_bf16_flops
    c.optimizer.update(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.01, clip_norm=1.0)
    c.checkpoint.update(every_steps=500, keep=3)

    a = c.align
    a.llm_dtype = c.llm.get_ref("dtype")
    a.llm_remat_policy = c.llm.get_ref("remat_policy")
    a.llm_attention_impl = c.llm.get_ref("attention_impl")
    a.llm_scan_layers = c.llm.get_ref("scan_layers").to_str()  # "True" / "False"
    # LibriSpeech (TFDS split names as in tfds' librispeech); utterances are <= 35 s.
    a.train_split = "train_clean100+train_clean360+train_other500"
    a.eval_splits = ("dev_clean", "dev_other")
    a.buckets = (160000, 320000, 560000)          # 10 / 20 / 35 s at 16 kHz
    a.max_label_length = 192                      # transcript tokens of a 35 s utterance
    a.max_response_length = 128
    a.ctc_max_label_length = 640
    a.ctc_weight = 0.3
    # The paper conformer already strides 80 ms (8x subsampling): one frame per embedding.
    a.projector.update(stack=1, kind="mlp", hidden_dim=0, norm="none")

    # What plan.py compiles the step with (training reads the real encoder from
    # align.encoder_dir; keep this equal to it).
    paper = sibling_config(config_file, "conformer_paper.py", "paper")
    c.plan = ml_collections.ConfigDict(dict(
        slice=slice_name, chip=sl.chip, encoder=paper.encoder.to_dict(),
        features=paper.features.to_dict(), prefix_tokens=CHAT_PREFIX_TOKENS,
        suffix_tokens=CHAT_SUFFIX_TOKENS))
    return c
