"""Llama-2-13B-chat: the frozen LLM of the paper/pod scale, and its alignment stage.

    python -m audiochat_jax.train --config configs/llama2_13b_chat.py:8xh100 --workdir work/align_13b --config.align.llm_dir=work/llama2_13b_chat --config.align.encoder_dir=work/ctc_paper/model --config.align.data_dir=work/tfds/librispeech_manual/1.0.0 --config.align.responses=work/responses_13b

Before it: `python -m audiochat_jax.convert llama --scan_layers --src Llama-2-13b-chat-hf --out
work/llama2_13b_chat`, a paper conformer (configs/conformer_paper.py:paper) and the responses
of this LLM to every transcript (`python -m audiochat_jax.responses`). Plan it first (AOT, no
accelerator needed): `python -m audiochat_jax.plan --config configs/llama2_13b_chat.py:8xh100`.

arg = the slice (mesh = data x fsdp x tensor; global batch = per-device batch x data x fsdp):
  v4-32      16 v4 devices on 4 host(s), mesh (1, 16, 1), batch 64
  v5p-128    64 v5p devices on 16 host(s), mesh (4, 16, 1), batch 256
  v5e-256   256 v5e devices on 64 host(s), mesh (16, 16, 1), batch 512
  8xh100      8 h100 devices on 1 host(s), mesh (1, 8, 1), batch 32
  2x8xh100   16 h100 devices on 2 host(s), mesh (2, 8, 1), batch 64
Each line's launch command (launch/README.md explains the flags; WORK = a shared / gs:// dir):
  v4-32: launch/tpu_pod.sh --tpu align-13b --zone ZONE --accelerator v4-32 --workdir WORK/align_13b_v4-32 -- --config configs/llama2_13b_chat.py:v4-32 --config.align.llm_dir=WORK/llama2_13b_chat --config.align.encoder_dir=WORK/ctc_paper/model --config.align.data_dir=WORK/tfds/librispeech_manual/1.0.0 --config.align.responses=WORK/responses_13b
  v5p-128: launch/tpu_pod.sh --tpu align-13b --zone ZONE --accelerator v5p-128 --workdir WORK/align_13b_v5p-128 -- --config configs/llama2_13b_chat.py:v5p-128 --config.align.llm_dir=WORK/llama2_13b_chat --config.align.encoder_dir=WORK/ctc_paper/model --config.align.data_dir=WORK/tfds/librispeech_manual/1.0.0 --config.align.responses=WORK/responses_13b
  v5e-256: launch/tpu_pod.sh --tpu align-13b --zone ZONE --accelerator v5litepod-256 --workdir WORK/align_13b_v5e-256 -- --config configs/llama2_13b_chat.py:v5e-256 --config.align.llm_dir=WORK/llama2_13b_chat --config.align.encoder_dir=WORK/ctc_paper/model --config.align.data_dir=WORK/tfds/librispeech_manual/1.0.0 --config.align.responses=WORK/responses_13b
  8xh100: launch/gpu_slurm.sh --nodes 1 --gpus_per_node 8 --workdir WORK/align_13b_8xh100 -- --config configs/llama2_13b_chat.py:8xh100 --config.align.llm_dir=WORK/llama2_13b_chat --config.align.encoder_dir=WORK/ctc_paper/model --config.align.data_dir=WORK/tfds/librispeech_manual/1.0.0 --config.align.responses=WORK/responses_13b
  2x8xh100: launch/gpu_slurm.sh --nodes 2 --gpus_per_node 8 --workdir WORK/align_13b_2x8xh100 -- --config configs/llama2_13b_chat.py:2x8xh100 --config.align.llm_dir=WORK/llama2_13b_chat --config.align.encoder_dir=WORK/ctc_paper/model --config.align.data_dir=WORK/tfds/librispeech_manual/1.0.0 --config.align.responses=WORK/responses_13b
Paths are required (`--config.align.*_dir`, `responses`); everything else can be overridden,
e.g. `--config.llm.remat_policy=full`. The `llm` section holds exactly the LlamaConfig fields
(`LlamaConfig.from_dict(config.llm.to_dict())`), the published dimensions of
`audiochat_jax.models.llama.LLAMA2_SIZES["13b"]` (Touvron et al. 2023, Table 1); its dtype,
remat policy and attention_impl (`cudnn`: fused attention on NVIDIA GPUs) are applied to
the LLM loaded from align.llm_dir. `plan` is what
`audiochat_jax.plan` compiles with (the paper conformer's shape, chat-template lengths).
"""
from audiochat_jax.train import align_configs

# slice -> (mesh (data, fsdp, tensor), per-device batch).
# 13B bf16 is 26 GB: FSDP over a host's chips (or more), data across the rest.
MESHES = {
    "v4-32": ((1, 16, 1), 4),
    "v5p-128": ((4, 16, 1), 4),
    "v5e-256": ((16, 16, 1), 2),
    "8xh100": ((1, 8, 1), 4),
    "2x8xh100": ((2, 8, 1), 4),
}


def get_config(arg=None):
    name = align_configs.parse_arg(arg, MESHES, "8xh100", "configs/llama2_13b_chat.py")
    mesh, per_device_batch = MESHES[name]
    return align_configs.slice_config(__file__, "13b", name, mesh, per_device_batch, remat_policy="dots_no_batch")
