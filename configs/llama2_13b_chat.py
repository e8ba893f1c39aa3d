"""Llama-2-13B-chat: the frozen LLM of the paper/pod scale.

    python -m audiochat_jax.convert llama --scan_layers --src Llama-2-13b-chat-hf --out work/llama2_13b_chat
    python -m audiochat_jax.generate --ckpt work/llama2_13b_chat --tokenizer Llama-2-13b-chat-hf/tokenizer.model --prompt "Hi"

Load with `get_config()`; the `llm` section holds exactly the LlamaConfig fields
(`LlamaConfig.from_dict(config.llm.to_dict())`), with the published dimensions from
`audiochat_jax.models.llama.LLAMA2_SIZES["13b"]` (Touvron et al. 2023, Table 1; the
meta-llama config.json). scan keeps compile time flat in depth.
Override from the command line, e.g. `--config.llm.remat_policy=none`. `arg` is unused
for now (the alignment stage adds its own fields beside `llm`).
"""
import ml_collections

from audiochat_jax.models.llama import LLAMA2_SIZES, LlamaConfig


def get_config(arg=None):
    del arg
    llm = LlamaConfig(**LLAMA2_SIZES["13b"], dtype="bfloat16", param_dtype="bfloat16",
                      remat_policy="dots_no_batch", scan_layers=True, attention_impl="xla")
    config = ml_collections.ConfigDict()
    config.llm = ml_collections.ConfigDict(llm.to_dict())
    return config
