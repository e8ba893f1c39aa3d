"""CTC loss (optax) and greedy decoding for the conformer's logits.

The blank id is an argument everywhere (our vocabularies put it last: ``CharVocab.blank_id``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _paddings(lengths: jax.Array, size: int) -> jax.Array:
    """[batch] lengths -> [batch, size] float paddings (1.0 = padded), optax's convention."""
    return (jnp.arange(size)[None, :] >= lengths[:, None]).astype(jnp.float32)


def ctc_loss(logits: jax.Array, lengths: jax.Array, labels: jax.Array, label_lengths: jax.Array,
             blank_id: int) -> jax.Array:
    """Per-example CTC negative log-likelihood, ``[batch]`` float32.

    logits [batch, frames, vocab] (unnormalised), lengths [batch] valid frames,
    labels [batch, max_label] int32 (padding values are ignored), label_lengths [batch].
    Sum over the utterance (not normalised by length); the caller picks the reduction.
    An infeasible alignment (more labels than frames allow) gives a large finite loss.
    """
    return optax.ctc_loss(logits.astype(jnp.float32), _paddings(lengths, logits.shape[1]),
                          labels.astype(jnp.int32), _paddings(label_lengths, labels.shape[1]),
                          blank_id=blank_id)


def min_frames(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """Fewest frames any CTC alignment of each label sequence needs, [batch] int32: one per
    label plus one blank between each pair of equal neighbours ("ll" needs l, blank, l)."""
    pos = jnp.arange(labels.shape[1])[None, :]
    repeats = (labels[:, 1:] == labels[:, :-1]) & (pos[:, 1:] < label_lengths[:, None])
    return label_lengths.astype(jnp.int32) + jnp.sum(repeats, axis=1, dtype=jnp.int32)


def feasible(lengths: jax.Array, labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """[batch] bool: the utterance's ``lengths`` frames can hold its labels at all. An
    infeasible row has no alignment; optax then returns a huge finite loss (~1e5) whose
    gradient is noise, so losses weight such rows 0 and count them (torch's zero_infinity)."""
    return lengths >= min_frames(labels, label_lengths)


def greedy_ids(logits: jax.Array) -> jax.Array:
    """Best class per frame, [batch, frames] int32 (jit-able half of greedy decoding)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def collapse(ids, lengths, blank_id: int) -> list[list[int]]:
    """Best path -> labels: drop frames past each length, merge repeats, drop blanks."""
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    out = []
    for row, n in zip(ids, lengths):
        row = row[: int(n)]
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        row = row[keep]
        out.append(row[row != blank_id].tolist())
    return out


def greedy_decode(logits: jax.Array, lengths: jax.Array, blank_id: int) -> list[list[int]]:
    """logits [batch, frames, vocab], lengths [batch] -> label ids per utterance."""
    return collapse(jax.device_get(greedy_ids(logits)), jax.device_get(lengths), blank_id)
