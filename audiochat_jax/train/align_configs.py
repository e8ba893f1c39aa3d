"""The align task's configs: the ``config.align`` section (``task_config``), a complete
trainer config (``full_config``), the mini world's (``mini_config``) and the paper/pod
slices' (``slice_config``: the body of configs/llama2_{7b,13b,70b}_chat.py).

``slice_config(size, slice, ...)``: the trainer's align config with the LLM, mesh, batch and
input sized for LibriSpeech / MLS English, plus a ``plan`` section (the conformer's shape and
the chat template's lengths) that ``audiochat_jax.plan`` compiles the step with.
"""
from __future__ import annotations

import ml_collections


def task_config() -> ml_collections.ConfigDict:
    """The ``config.align`` section (fields documented in the module docstring)."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(
        llm_dir=placeholder(str), encoder_dir=placeholder(str), tokenizer="",
        data_dir=placeholder(str), responses=placeholder(str),
        train_split="train", eval_splits=("test",), eval_batches=4,
        system="", instruction="{content}", families="", heldout_families="",
        buckets=(64000, 128000, 256000), max_label_length=96, max_response_length=64,
        max_prefix_length=128, max_suffix_length=32, family_weights="",
        ctc_max_label_length=256, shuffle_buffer=2048,
        projector=ml_collections.ConfigDict(dict(stack=2, kind="mlp", hidden_dim=0, norm="none",
                                                 dtype="float32", param_dtype="float32")),
        trainable="all",
        ce_weight=1.0, kl_weight=0.0, kl_temperature=1.0, ctc_weight=0.0, embed_weight=0.0,
        llm_dtype="", llm_remat_policy="", llm_attention_impl="", encoder_dtype="",
        llm_scan_layers="",
    ))


def full_config() -> ml_collections.ConfigDict:
    """A complete trainer config for ``align``; paths, total_steps and batch_size remain."""
    from audiochat_jax.train import loop
    c = loop.base_config()
    c.task = "align"
    c.align = task_config()
    return c


def mini_config(smoke: bool = False) -> ml_collections.ConfigDict:
    """The mini world's align stage (configs/mini.py wires the paths); ``smoke`` shrinks it."""
    c = full_config()
    c.total_steps, c.batch_size, c.log_every, c.eval_every = 720, 16, 20, 0
    # 720 steps, not 480: over three align seeds held-out spoken QA rose from 0.445 +- 0.022 to
    # 0.628 +- 0.014 for ~2.5 more minutes on 2 cores (docs/mini_world.md).
    c.optimizer.update(learning_rate=1e-3, warmup_steps=30, weight_decay=0.01, clip_norm=1.0)
    c.checkpoint.every_steps = 125
    c.align.update(eval_splits=("test_seen",), buckets=(48000, 96000), max_label_length=48,
                   max_response_length=48, ctc_weight=0.3)
    if smoke:
        c.total_steps, c.batch_size, c.log_every, c.eval_every = 10, 8, 5, 0
        c.optimizer.warmup_steps = 2
        c.align.eval_batches = 1
    return c


# Llama-2 chat template pieces around the user content without a system prompt, in Llama-2's
# sentencepiece: "<s>" "▁[" "INST" "]" before, "▁[" "/" "INST" "]" after. A system prompt
# adds its tokens plus "<<SYS>>"/"<</SYS>>" markup to the prefix: raise plan.prefix_tokens.
CHAT_PREFIX_TOKENS, CHAT_SUFFIX_TOKENS = 4, 4


def parse_arg(arg, slices, default: str, where: str) -> str:
    """The slice named by a config ``arg`` (``None``/"" = ``default``); unknown names fail."""
    arg = arg or default
    if arg not in slices:
        raise ValueError(f"{where}:{arg}: unknown slice; use one of {sorted(slices)}")
    return arg


def slice_config(config_file: str, size: str, slice_name: str, mesh_shape: tuple[int, int, int],
                 per_device_batch: int, remat_policy: str) -> ml_collections.ConfigDict:
    """The full align config for Llama-2-``size``-chat on ``slice_name`` (see module docstring).

    ``mesh_shape`` (data, fsdp, tensor) must multiply to the slice's devices; the global batch
    is ``per_device_batch * data * fsdp`` (tensor-parallel devices share rows).
    """
    from audiochat_jax.models.llama import LLAMA2_SIZES, LlamaConfig
    from audiochat_jax.parallel.chips import CHIPS, SLICES
    from audiochat_jax.train.config_files import sibling

    sl = SLICES[slice_name]
    data, fsdp, tensor = mesh_shape
    if data * fsdp * tensor != sl.devices:
        raise ValueError(f"{config_file}: mesh {mesh_shape} has {data * fsdp * tensor} devices, "
                         f"slice {slice_name} has {sl.devices}")
    c = full_config()
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
    paper = sibling(config_file, "conformer_paper.py", "paper")
    c.plan = ml_collections.ConfigDict(dict(
        slice=slice_name, chip=sl.chip, encoder=paper.encoder.to_dict(),
        features=paper.features.to_dict(), prefix_tokens=CHAT_PREFIX_TOKENS,
        suffix_tokens=CHAT_SUFFIX_TOKENS))
    return c
