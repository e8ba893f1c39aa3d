"""A loaded speech LLM for inference: frozen Llama + tokenizer + aligned audio embedder.

    model = SpeechModel.load("work/mini/align/model")        # a ``speech_llm`` model directory
    emb, lengths = model.embed_audio([wave0, wave1])          # float32 [samples] at 16 kHz each

The ``speech_llm`` directory (train/align.py's export) records the frozen LLM's directory and
tokenizer path; ``llm_dir`` / ``tokenizer`` override them (e.g. after moving the work dir).
``SpeechModel.text_only`` wraps a bare ``llama`` directory (no audio: text and cascade paths).

Audio batches are padded to ``batch_rows`` rows and a multiple of ``bucket_samples`` samples so
the jitted features + encoder + projector compile once per bucket, not per batch. A recording
longer than ``chunk_seconds`` is encoded alone in overlapping windows (models/long_audio.py:
memory set by the window, not the length) and its embeddings mean-pooled by ``extra_stride``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models import long_audio, speech_llm
from audiochat_jax.models.llama import LlamaConfig, compute_dtype
from audiochat_jax.text.tokenizer import Tokenizer


@dataclasses.dataclass
class SpeechModel:
    llm_config: LlamaConfig
    llm_params: Any                      # plain arrays
    tokenizer: Tokenizer
    spec: speech_llm.SpeechLLMConfig | None = None   # None: text only
    variables: Any = None                # the embedder's variables
    meta: dict = dataclasses.field(default_factory=dict)
    batch_rows: int = 8
    bucket_samples: int = 16000
    chunk_seconds: float = 30.0          # longer audio: windowed encoding (models/long_audio.py)
    overlap_seconds: float = 4.0         # window overlap (half of it is context at each inner edge)
    extra_stride: int = 1                # mean-pool the windowed path's embeddings by this factor

    @classmethod
    def load(cls, aligned_dir: str, llm_dir: str = "", tokenizer: str = "", **kw) -> "SpeechModel":
        meta, variables = model_dir.load_model_dir(aligned_dir, speech_llm.KIND)
        spec = speech_llm.SpeechLLMConfig.from_dict(meta["config"])
        llm_dir = llm_dir or meta.get("llm_dir", "")
        tok = tokenizer or meta.get("tokenizer", "")
        if not llm_dir or not tok:
            raise ValueError(f"{aligned_dir}/config.json names no llm_dir/tokenizer; pass them "
                             "(--llm_dir/--tokenizer or config.eval.llm_dir/tokenizer)")
        base = cls.text_only(llm_dir, tok, **kw)
        llm_spec = LlamaConfig.from_dict(spec.llm)
        if (llm_spec.vocab_size, llm_spec.dim) != (base.llm_config.vocab_size, base.llm_config.dim):
            raise ValueError(f"{aligned_dir}: aligned to an LLM with vocab {llm_spec.vocab_size} / dim "
                             f"{llm_spec.dim}, but {llm_dir} has {base.llm_config.vocab_size} / "
                             f"{base.llm_config.dim}; point llm_dir at the LLM it was aligned to")
        return dataclasses.replace(base, spec=spec, variables=variables, meta=meta)

    @classmethod
    def text_only(cls, llm_dir: str, tokenizer: str = "", **kw) -> "SpeechModel":
        meta, params = model_dir.load_model_dir(llm_dir, "llama")
        if not tokenizer:
            if not meta.get("tokenizer"):
                raise ValueError(f"{llm_dir}/config.json names no tokenizer; pass its sentencepiece .model")
            tokenizer = os.path.join(llm_dir, meta["tokenizer"])
        return cls(LlamaConfig.from_dict(meta["config"]), params, Tokenizer(tokenizer), **kw)

    # ----------------------------------------------------------------- audio
    @property
    def has_audio(self) -> bool:
        return self.spec is not None

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.spec.features)

    @property
    def system(self) -> str | None:
        """The system prompt the model was aligned with (None = none)."""
        return self.meta.get("system") or None

    def _embed_fn(self):
        if not hasattr(self, "_jitted"):
            embedder, feats = self.spec.embedder(), self.features
            dtype = compute_dtype(self.llm_config.dtype)

            @jax.jit
            def fn(variables, waves, lengths):
                out = speech_llm.embed_audio(embedder, variables, feats, waves, lengths)
                return out["embeddings"].astype(dtype), out["lengths"]
            self._jitted = fn
        return self._jitted

    def embed_audio(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Float32 waveforms at 16 kHz -> (embeddings [n, A, dim], lengths [n]) as numpy,
        ``A`` the longest in the batch (rows past their length are zero)."""
        if not self.has_audio:
            raise ValueError("this model has no audio embedder (a text-only llama directory)")
        sr = self.features.sample_rate
        if any(self.is_long(len(w)) for w in waves):
            return self._embed_mixed(waves)
        embs, lens = [], []
        for start in range(0, len(waves), self.batch_rows):
            chunk = waves[start:start + self.batch_rows]
            n = int(math.ceil(max(len(w) for w in chunk) / self.bucket_samples) * self.bucket_samples)
            batch = np.zeros((self.batch_rows, max(n, sr // 10)), np.float32)
            lengths = np.zeros((self.batch_rows,), np.int32)
            for i, w in enumerate(chunk):
                batch[i, :len(w)], lengths[i] = w, len(w)
            e, l = self._embed_fn()(self.variables, jnp.asarray(batch), jnp.asarray(lengths))
            embs.append(np.asarray(e)[:len(chunk)])
            lens.append(np.asarray(l)[:len(chunk)])
        width = max(e.shape[1] for e in embs)
        out = np.concatenate([np.pad(e, ((0, 0), (0, width - e.shape[1]), (0, 0))) for e in embs])
        return out, np.concatenate(lens)

    @property
    def can_transcribe(self) -> bool:
        """The embedder carries the encoder's CTC head and the directory its character vocabulary."""
        return self.has_audio and self.spec.ctc_head and isinstance(self.meta.get("vocab"), dict)

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Greedy CTC transcripts from the aligned encoder's own CTC head (what the cascade
        would read), one wave at a time (the server's use: a few per request)."""
        from audiochat_jax.models.ctc import greedy_decode
        from audiochat_jax.text.char_vocab import CharVocab
        if not self.can_transcribe:
            raise ValueError("this speech LLM has no CTC head (or no character vocabulary) to transcribe with")
        if not hasattr(self, "_ctc_fn"):
            embedder, feats = self.spec.embedder(), self.features

            @jax.jit
            def fn(variables, waves, lengths):
                out = speech_llm.embed_audio(embedder, variables, feats, waves, lengths)
                return out["ctc_logits"], out["frame_lengths"]
            self._ctc_fn = fn
        vocab = CharVocab.from_dict(self.meta["vocab"])
        out = []
        for w in waves:
            n = int(math.ceil(max(len(w), 1) / self.bucket_samples) * self.bucket_samples)
            batch = np.zeros((1, n), np.float32)
            batch[0, :len(w)] = w
            logits, lengths = self._ctc_fn(self.variables, jnp.asarray(batch), jnp.asarray([len(w)], np.int32))
            out.append(vocab.decode(greedy_decode(logits, lengths, vocab.blank_id)[0]))
        return out

    def is_long(self, n_samples: int) -> bool:
        return n_samples > self.chunk_seconds * self.features.sample_rate

    def audio_embedding_count(self, n_samples: int) -> int:
        """Embeddings ``embed_audio`` gives a recording of ``n_samples`` (pooled if long)."""
        stride = self.extra_stride if self.is_long(n_samples) else 1
        return long_audio.embedding_count(n_samples, self.spec.embedder(), self.features, stride)

    def _embed_mixed(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Short waves batched as usual, long ones one by one through ``encode_long``."""
        rows: dict[int, np.ndarray] = {}
        short = [i for i, w in enumerate(waves) if not self.is_long(len(w))]
        if short:
            e, n = self.embed_audio([waves[i] for i in short])
            rows.update({i: e[k, :n[k]] for k, i in enumerate(short)})
        dtype = compute_dtype(self.llm_config.dtype)
        for i, w in enumerate(waves):
            if i not in rows:
                rows[i] = long_audio.encode_long(
                    self.spec.embedder(), self.variables, self.features, w, chunk_seconds=self.chunk_seconds,
                    overlap_seconds=self.overlap_seconds, extra_stride=self.extra_stride).astype(dtype)
        width = max(r.shape[0] for r in rows.values())
        out = np.stack([np.pad(rows[i], ((0, width - rows[i].shape[0]), (0, 0))) for i in range(len(waves))])
        return out, np.array([rows[i].shape[0] for i in range(len(waves))], np.int32)
