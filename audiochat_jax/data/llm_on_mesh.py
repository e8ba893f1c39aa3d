"""A frozen Llama on a device mesh: params restored sharded, prompts answered as global batches.

    cfg, params = load_llm("work/llm", mesh)           # each array sharded by its logical names
    replies = generate_batch(cfg, params, prompts, mesh=mesh, batch_size=8, width=64, ...)

Multi-host: every host passes the same ``prompts`` (the whole global batch); the batch is
built with ``jax.make_array_from_callback``, so each host materialises only its own
devices' rows of the (data, fsdp) batch axis, and the answers are gathered back to every
host. Used by the response precompute (data/responses.py); the evaluation's text answers
need the same thing.
"""
from __future__ import annotations

import jax
import numpy as np


def abstract_llm(cfg, mesh):
    """``(abstract params, shardings)`` of ``cfg``'s Llama on ``mesh``, by logical axis names
    (``jax.ShapeDtypeStruct`` leaves carrying their shardings: nothing is allocated)."""
    import flax.linen as nn
    from audiochat_jax.models.llama import init_params
    from audiochat_jax.parallel import sharding
    boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    shardings = sharding.logical_to_sharding(boxed, mesh)
    abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      nn.unbox(boxed), shardings)
    return abstract, shardings


def load_llm(llm_dir: str, mesh, scan_layers: bool | None = None):
    """``(LlamaConfig, params)`` with params restored straight onto ``mesh``, each array
    sharded by its logical axis names (parallel/sharding.py).

    ``scan_layers`` (None = as saved) runs the layers scanned or unrolled whatever layout the
    directory holds: the restored ``layers_{i}`` are stacked into ``layers`` [n_layers, ...]
    (or split out of it) once, on the devices, and the returned config says which. The
    parameters are the same numbers either way; only the step's program changes (one
    compiled layer in a loop, or n_layers in sequence).
    """
    from audiochat_jax.models.model_dir import load_model_dir, read_model_config
    from audiochat_jax.models.llama import LlamaConfig, stack_layer_params, unstack_layer_params
    cfg = LlamaConfig.from_dict(read_model_config(llm_dir, "llama")["config"])
    abstract, _ = abstract_llm(cfg, mesh)
    _, params = load_model_dir(llm_dir, "llama", abstract_params=abstract)
    if scan_layers is None or bool(scan_layers) == cfg.scan_layers:
        return cfg, params
    target = cfg.replace(scan_layers=bool(scan_layers))
    _, shardings = abstract_llm(target, mesh)
    relayout = ((lambda p: stack_layer_params(p, cfg.n_layers)) if target.scan_layers
                else unstack_layer_params)
    # Both layouts are on the devices for the moment of the copy: twice the LLM's bytes per
    # device (XLA cannot write a stacked array into the buffers of the layers it stacks).
    return target, jax.jit(relayout, out_shardings=shardings)(params)


def _to_host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def generate_batch(llm_config, params, prompts: list[list[int]], *, mesh, batch_size: int,
                   width: int, pad_id: int, eos_id: int, max_new_tokens: int, rng,
                   temperature: float, top_p: float) -> list[list[int]]:
    """Answers ``prompts`` (at most ``batch_size``) as one left-padded global batch
    ``[batch_size, width]``; returns each prompt's new ids up to and including EOS."""
    from audiochat_jax.models.generate import generate
    from audiochat_jax.parallel import sharding
    rows = list(prompts) + [prompts[0]] * (batch_size - len(prompts))  # fillers, discarded
    tokens = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):], mask[i, width - len(row):] = row, True
    spec = sharding.batch_sharding(mesh, 2)
    tokens_g, mask_g = (jax.make_array_from_callback(a.shape, spec, lambda idx, a=a: a[idx])
                        for a in (tokens, mask))
    with jax.set_mesh(mesh), sharding.axis_rules():
        out, lengths = generate(llm_config, params, tokens=tokens_g, mask=mask_g,
                                max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                rng=rng, temperature=temperature, top_p=top_p)
    out, lengths = _to_host(out), _to_host(lengths)
    return [out[i, :lengths[i]].tolist() for i in range(len(prompts))]
