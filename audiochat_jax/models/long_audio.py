"""Long recordings (minutes) through the audio embedder in overlapping windows, memory bounded.

    emb = encode_long(embedder, variables, feature_config, wave, chunk_seconds=30.0,
                      overlap_seconds=4.0, extra_stride=1)          # [A', llm_dim] numpy

Why: the conformer's self-attention is quadratic in length (a 10-minute recording is 15 000
encoder frames: ~4 GB of attention scores per layer in float32), but the features and the
output are linear. So:

1. log-mel of the WHOLE recording at once (linear and cheap; the per-utterance mean/std
   normalisation then sees the whole recording, exactly as the whole-recording path does);
2. the feature frames are cut into windows of ``W`` frames starting every ``H = W - O``
   frames (``O`` = overlap); the last window is zero-padded past the recording's length (the
   encoder masks padding), so the per-window function compiles ONCE per window size,
   whatever the recording's length;
3. from each window only its centre is kept: half the overlap is dropped at every inner edge
   (``floor(O/2)`` embeddings on the left, ``ceil(O/2)`` on the right; none at the
   recording's own start and end), and the kept parts are concatenated: seamless and
   non-overlapping, so the count equals the whole-recording path's
   ``A = ceil(subsampled(num_frames(samples)) / stack)`` exactly;
4. optionally ``extra_stride`` e: the mean of e consecutive embeddings (the last group
   averages what it has), ``A' = ceil(A / e)``.

Units: windows are whole numbers of embeddings, ``fk = subsampling_factor * stack`` feature
frames each (80 ms for a 4x conformer with stack 2), and window starts are multiples of
``fk``, so window-local embedding m IS global embedding ``start/fk + m`` (the subsampling
convs and the frame stacking line up with the whole-recording grid).

What chunking changes (the trade-offs):
* Context. A kept embedding is computed from its window only (``>= O/2`` of context on each
  side), not from the whole recording. For an encoder whose receptive field is local (no
  attention layers; or convolution-only context narrower than ``O/2``) the result equals the
  whole-recording encoding; with global self-attention it is an approximation whose quality
  depends on the overlap (tests/test_long_audio.py proves the first; bench/long_audio.py
  measures the deviation for the mini conformer).
* ``extra_stride`` shortens the LLM prompt e-fold (a 10-minute recording at 80 ms is 7 500
  embeddings; e=4 gives 1 875, fitting a 4 096-token Llama-2 context) at the cost of
  temporal detail, and its averaged embeddings are a distribution the projector was not
  aligned on (smaller norms, blended content): expect a quality drop unless alignment is
  run with the same stride.
* Memory: the window function's peak is fixed by ``chunk_seconds`` (and ``batch_windows``);
  the log-mel, the host copy of the features and the output grow linearly with length.

Encoders that read waveforms (wav2vec2, ``input_kind == "waveform"``) are not supported here:
they need windows of samples, not feature frames.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.audio.features import FeatureConfig, log_mel, num_frames
from audiochat_jax.models.conformer import ConformerConfig, subsampled_lengths
from audiochat_jax.models.projector import stacked_lengths

# Traces of the per-window function so far (each trace is one XLA compilation): the tests and
# the bench read it to show that one window size compiles once, whatever the length.
TRACES = {"window": 0}


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one recording lie, in embeddings (``fk`` feature frames each).

    ``starts[i]`` first embedding of window i; ``keep[i] = (lo, hi)`` the global embedding
    range window i contributes (half-open, contiguous across windows, covering ``[0, count)``).
    """
    fk: int                   # feature frames per embedding (subsampling * stack)
    window: int               # W, embeddings per window
    overlap: int              # O
    count: int                # A, embeddings of the whole recording
    starts: tuple
    keep: tuple

    @property
    def hop(self) -> int:
        return self.window - self.overlap

    @property
    def n_windows(self) -> int:
        return len(self.starts)


def frames_per_embedding(embedder) -> int:
    """Feature frames per audio embedding, ``subsampling_factor * stack``, after checking that
    the encoder maps ``fk * n`` frames to exactly ``n`` embeddings (what window alignment needs)."""
    enc = getattr(embedder, "encoder", None)
    if not isinstance(enc, ConformerConfig):
        raise ValueError(f"encode_long: needs an embedder with a log-mel conformer encoder "
                         f"(AudioEmbedder.encoder a ConformerConfig), got {type(enc).__name__}; waveform "
                         "encoders (wav2vec2) are not supported for chunked encoding yet")
    f, k = enc.subsampling_factor, embedder.projector.stack
    for n in (1, 2, 3, 7):
        if subsampled_lengths(f * n, enc) != n:
            raise ValueError(f"encode_long: ConformerConfig.subsampling_kernel_size="
                             f"{enc.subsampling_kernel_size} maps {f * n} frames to "
                             f"{subsampled_lengths(f * n, enc)}, not {n}; windows need an odd kernel")
    return f * k


def embedding_count(n_samples: int, embedder, feature_config: FeatureConfig, extra_stride: int = 1) -> int:
    """Audio embeddings a recording of ``n_samples`` gives (whole-recording path; = encode_long's)."""
    frames = int(num_frames(int(n_samples), feature_config))
    enc = int(subsampled_lengths(frames, embedder.encoder)) if frames > 0 else 0
    count = int(stacked_lengths(enc, embedder.projector.stack))
    return -(-count // extra_stride)


def plan_windows(n_frames: int, fk: int, window: int, overlap: int) -> WindowPlan:
    """Windows (in embeddings) for ``n_frames`` valid feature frames; see the module docstring."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"plan_windows: need window >= 1 embedding and 0 <= overlap < window; got "
                         f"window={window}, overlap={overlap} (raise chunk_seconds or lower overlap_seconds)")
    count = -(-n_frames // fk)           # ceil(ceil(n / f) / k) == ceil(n / (f k))
    hop = window - overlap
    n = 1 if count <= window else 1 + -(-(count - window) // hop)
    starts = tuple(i * hop for i in range(n))
    lo = [0] + [s + overlap // 2 for s in starts[1:]]
    keep = tuple(zip(lo, lo[1:] + [count]))
    return WindowPlan(fk, window, overlap, count, starts, keep)


@functools.partial(jax.jit, static_argnames=("embedder",))
def _embed_windows(variables, feats, lengths, *, embedder):
    """feats [B, W*fk, n_mels], lengths [B] -> (embeddings [B, W, dim], lengths [B])."""
    TRACES["window"] += 1
    out = embedder.apply(variables, feats, lengths)
    return out["embeddings"], out["lengths"]


@functools.partial(jax.jit, static_argnames=("config",))
def _features(wave, length, *, config):
    feats, n = log_mel(wave[None], length[None], config)
    return feats[0], n[0]


def pool(embeddings: np.ndarray, extra_stride: int) -> np.ndarray:
    """[A, dim] -> [ceil(A / e), dim]: means of e consecutive embeddings (the last group of
    ``A mod e`` is the mean of those, not diluted by padding)."""
    if not isinstance(extra_stride, int) or extra_stride < 1:
        raise ValueError(f"extra_stride={extra_stride!r}: must be a positive integer")
    if extra_stride == 1:
        return embeddings
    a, d = embeddings.shape
    groups = -(-a // extra_stride)
    padded = np.zeros((groups * extra_stride, d), np.float32)
    padded[:a] = embeddings
    sizes = np.minimum(extra_stride, a - extra_stride * np.arange(groups))[:, None]
    return (padded.reshape(groups, extra_stride, d).sum(axis=1) / sizes).astype(embeddings.dtype)


def window_embeddings(embedder, chunk_seconds: float, overlap_seconds: float,
                      feature_config: FeatureConfig) -> tuple[int, int]:
    """(W, O) in embeddings for chunk/overlap lengths in seconds (rounded to whole embeddings)."""
    fk = frames_per_embedding(embedder)
    per_second = 1000.0 / feature_config.hop_ms / fk        # embeddings per second
    return max(1, round(chunk_seconds * per_second)), max(0, round(overlap_seconds * per_second))


def encode_long(embedder, variables, feature_config: FeatureConfig, wave: np.ndarray, *,
                chunk_seconds: float, overlap_seconds: float, extra_stride: int = 1,
                batch_windows: int = 1) -> np.ndarray:
    """One recording -> its audio embeddings, encoded window by window.

    Args:
      embedder: a ``speech_llm.AudioEmbedder`` (log-mel conformer encoder + projector).
      variables: its variables (``params`` [+ ``batch_stats``]).
      feature_config: the log-mel settings the embedder was trained with.
      wave: ``[samples]`` float32 mono at ``feature_config.sample_rate``.
      chunk_seconds: window length (rounded to whole embeddings, ``fk`` frames each).
      overlap_seconds: overlap of consecutive windows; half of it is context dropped at each
        inner edge. Must be shorter than the window.
      extra_stride: mean-pool e consecutive output embeddings (1 = off).
      batch_windows: windows per call (more = faster on an accelerator, more memory).

    Returns:
      embeddings ``[ceil(A / extra_stride), dim]`` numpy (the projector's dtype), where ``A`` is
      the whole-recording path's count (``embedding_count``).
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"encode_long: wave must be [samples] mono, got shape {wave.shape}; downmix first")
    fk = frames_per_embedding(embedder)
    variables = jax.device_put(variables)    # once, not once per window
    w, o = window_embeddings(embedder, chunk_seconds, overlap_seconds, feature_config)
    if o >= w:
        raise ValueError(f"encode_long: overlap_seconds={overlap_seconds} is not shorter than "
                         f"chunk_seconds={chunk_seconds}; lower the overlap")
    # Pad the samples to a multiple of the hop so that log-mel compiles per hop-sized bucket,
    # not per length (valid frames are unchanged: log_mel masks past `length`).
    bucket = (w - o) * fk * feature_config.hop_length
    padded = np.zeros((max(1, -(-len(wave) // bucket)) * bucket,), np.float32)
    padded[:len(wave)] = wave
    feats, n_frames = _features(jnp.asarray(padded), jnp.asarray(len(wave), jnp.int32), config=feature_config)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"encode_long: {len(wave)} samples give no feature frame; the audio is too short")
    plan = plan_windows(n_frames, fk, w, o)
    frames_w = w * fk
    total = plan.starts[-1] * fk + frames_w
    host = np.zeros((max(total, feats.shape[0]), feats.shape[1]), np.float32)
    host[:feats.shape[0]] = np.asarray(feats)
    host[n_frames:] = 0.0
    del feats

    out = []
    for b0 in range(0, plan.n_windows, batch_windows):
        idx = list(range(b0, min(b0 + batch_windows, plan.n_windows)))
        batch = np.zeros((batch_windows, frames_w, host.shape[1]), np.float32)
        lengths = np.zeros((batch_windows,), np.int32)
        for j, i in enumerate(idx):
            s = plan.starts[i] * fk
            batch[j] = host[s:s + frames_w]
            lengths[j] = min(frames_w, n_frames - s)
        emb, _ = _embed_windows(variables, jnp.asarray(batch), jnp.asarray(lengths), embedder=embedder)
        emb = np.asarray(emb)
        for j, i in enumerate(idx):
            lo, hi = plan.keep[i]
            out.append(emb[j, lo - plan.starts[i]:hi - plan.starts[i]])
    return pool(np.concatenate(out), extra_stride)


def check_context(n_embeddings: int, max_seq_len: int, reserved: int, *, extra_stride: int = 1,
                  seconds: float | None = None, where: str = "audio") -> None:
    """Raises ValueError (naming the fix) if ``n_embeddings`` (already pooled by
    ``extra_stride``) plus ``reserved`` slots (template tokens, reply) exceed ``max_seq_len``."""
    room = max_seq_len - reserved
    if n_embeddings <= room:
        return
    dur = f" ({seconds:.1f} s)" if seconds is not None else ""
    if room < 1:
        raise ValueError(f"{where}{dur}: the LLM's max_seq_len {max_seq_len} leaves no room for audio after "
                         f"{reserved} reserved slots (prompt + reply); lower max_new_tokens or use a longer-context LLM")
    raw = n_embeddings * extra_stride            # about the unpooled count
    need = -(-raw // room)
    fix = f"raise extra_stride to {need}" if need > extra_stride else "raise extra_stride"
    if seconds is not None:
        fix += f", or use audio shorter than {seconds * room / n_embeddings:.0f} s"
    raise ValueError(f"{where}{dur} gives {n_embeddings} audio embeddings at extra_stride={extra_stride}, but the "
                     f"LLM's max_seq_len {max_seq_len} holds only {room} after {reserved} reserved slots: {fix} "
                     f"(--extra_stride / config field extra_stride)")


__all__ = ["WindowPlan", "TRACES", "check_context", "embedding_count", "encode_long", "frames_per_embedding",
           "plan_windows", "pool", "window_embeddings"]
