"""KV-cache generation for ``Llama``: one prefill, then a jitted ``lax.while_loop`` decode.

Prompts are a padded batch ``[batch, length]`` with ``mask`` True on real tokens; padding
may be on the left, the right, or both. Each row's real tokens get positions 0, 1, ... and
its new tokens continue from there, so a row's output does not depend on its padding or on
the other rows (tests/test_generate.py checks batched == unbatched).

Cache layout: slots ``[0, length)`` hold the prompt (pad slots stay masked), slots
``length + i`` the i-th new token of every row.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import precision
from audiochat_jax.models.llama import Llama, LlamaConfig, compute_dtype, init_cache


def cast_for_inference(params, config: LlamaConfig):
    """Casts matrices (embedding, kernels) to the compute dtype once, before the decode loop.

    The model casts each kernel to the compute dtype at every use anyway; doing it once up
    front gives identical numbers and keeps the loop from re-reading float32 weights per
    token. Norm scales (1-D) keep their dtype, exactly as in the model. On XLA:CPU the
    weights stay as stored: its decode products run in float32 (models/precision.py),
    and bfloat16 copies would be converted back on every token.
    """
    dtype = compute_dtype(config.dtype)
    if dtype == jnp.bfloat16 and precision.float32_result_dots():
        return params
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating) else x,
        params)


def sample_token(logits, rng, temperature: float, top_p: float):
    """Next token per row from logits [batch, vocab] float32 -> [batch] int32.

    ``temperature == 0``: greedy. Otherwise softmax(logits / temperature) restricted to the
    smallest set of most likely tokens whose probability reaches ``top_p`` (nucleus).
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is < top_p (the top token always stays)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        choice = jax.random.categorical(rng, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_id", "pad_id",
                                             "temperature", "top_p"))
def _generate(params, tokens, embeddings, mask, rng, *, config, max_new_tokens, eos_id, pad_id,
              temperature, top_p):
    model = Llama(config)
    params = {"params": cast_for_inference(params, config)}
    batch, length = mask.shape
    mask = mask.astype(bool)
    n_real = mask.sum(axis=1).astype(jnp.int32)                               # [batch]
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)

    # Prefill: the whole prompt at once; only the last real token's logits are needed.
    cache = init_cache(config, batch, length + max_new_tokens)
    hidden, cache = model.apply(params, tokens, embeddings=embeddings, positions=positions,
                                mask=mask, cache=cache, decode=True, method=Llama.hidden_states)
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)                    # last real slot
    hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)         # [batch, 1, dim]
    logits = model.apply(params, hidden, method=Llama.logits)[:, 0]

    def cond(state):
        i, _, _, done, _, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, logits, cache, done, out, lengths, rng = state
        rng, sub = jax.random.split(rng)
        tok = jnp.where(done, pad_id, sample_token(logits, sub, temperature, top_p))
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (tok == eos_id)
        step_logits, cache = model.apply(
            params, tok[:, None], positions=(n_real + i)[:, None],
            mask=jnp.ones((batch, 1), bool), cache=cache, decode=True)
        return i + 1, step_logits[:, 0], cache, done, out, lengths, rng

    state = (jnp.int32(0), logits, cache, jnp.zeros((batch,), bool),
             jnp.full((batch, max_new_tokens), pad_id, jnp.int32), jnp.zeros((batch,), jnp.int32), rng)
    _, _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, state)
    return out, lengths


def generate(config: LlamaConfig, params, *, tokens=None, embeddings=None, mask, max_new_tokens: int,
             eos_id: int, pad_id: int = 0, rng=None, temperature: float = 0.0, top_p: float = 1.0):
    """Continues each prompt row until EOS or ``max_new_tokens``.

    Args:
      params: the Llama params (plain arrays, unboxed), as saved by convert / the trainer.
      tokens: [batch, length] int32 prompt ids, or
      embeddings: [batch, length, dim] prompt embeddings (e.g. with audio spliced in).
      mask: [batch, length] bool, True on real prompt tokens (left and/or right padding).
      rng: a PRNG key; required when ``temperature > 0``.
    Returns:
      new_tokens [batch, max_new_tokens] int32 (``pad_id`` after a row's EOS) and
      lengths [batch] int32: tokens generated per row, counting the EOS when one was produced.
    """
    if (tokens is None) == (embeddings is None):
        raise ValueError("generate: pass exactly one of tokens=[batch, length] or "
                         "embeddings=[batch, length, dim]")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"generate: need temperature >= 0 and 0 < top_p <= 1 "
                         f"(got {temperature}, {top_p})")
    if temperature > 0 and rng is None:
        raise ValueError("generate: temperature > 0 samples; pass rng=jax.random.key(seed)")
    mask = mask if hasattr(mask, "ndim") else np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"generate: mask must be [batch, length] (got shape {mask.shape})")
    if mask.shape[1] + max_new_tokens > config.max_seq_len:
        raise ValueError(f"generate: prompt length {mask.shape[1]} + max_new_tokens {max_new_tokens} "
                         f"exceeds the model's max_seq_len {config.max_seq_len}")
    # Row contents can only be checked where this host sees every row: a multi-host global
    # array (or a tracer) is not fully addressable, and fetching it would fail.
    if not isinstance(mask, jax.core.Tracer) and getattr(mask, "is_fully_addressable", True):
        m = np.asarray(mask)
        if not m.any(axis=1).all():
            raise ValueError(f"generate: mask must be [batch, length] with at least one real token "
                             f"per row (got shape {m.shape}, empty rows "
                             f"{np.flatnonzero(~m.any(axis=1)).tolist()})")
    rng = jax.random.key(0) if rng is None else rng
    return _generate(params, tokens, embeddings, jnp.asarray(mask), rng, config=config,
                     max_new_tokens=int(max_new_tokens), eos_id=int(eos_id), pad_id=int(pad_id),
                     temperature=float(temperature), top_p=float(top_p))
