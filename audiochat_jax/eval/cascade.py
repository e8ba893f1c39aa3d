"""ASR for the cascade baseline: our CTC conformer and pocketsphinx (an outside recogniser).

The cascade feeds an ASR transcript to the frozen LLM as text; comparing it with the
end-to-end path separates "the encoder heard it" from "the LLM understood the audio".

* ``ctc_transcripts``: greedy CTC with the pre-trained ``conformer_ctc`` directory
  (audiochat_jax.inference.transcriber.Transcriber), batched and length-bucketed.
* ``PocketSphinx``: pocketsphinx 5's en-us acoustic model with an n-gram LM built from
  in-domain text (``pocketsphinx.lm.ArpaBoLM``) and a dictionary cut from its CMUdict to
  that LM's words (loading all of CMUdict takes ~10 s). The generic en-us LM turns espeak
  speech into unrelated English ("what is seven plus twelve" -> "well it's still going
  well"); the domain LM gives it the same text prior our CTC model had from its training
  sentences, which makes the comparison fair. Words missing from CMUdict are left out (and
  counted: ``oov_words``).
* ``wer``: word error rate (jiwer) over a corpus.
"""
from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import jiwer
import numpy as np

from audiochat_jax.audio.io import float_to_int16


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (total edits / total reference words); empty hypotheses count as deletions."""
    if len(references) != len(hypotheses):
        raise ValueError(f"wer: {len(references)} references vs {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("wer: no references")
    return float(jiwer.wer(list(references), [h if h.strip() else "" for h in hypotheses]))


def ctc_transcripts(transcriber, waves: Sequence[np.ndarray], batch_size: int = 8,
                    bucket_samples: int = 16000) -> list[str]:
    """Greedy CTC transcripts of float32 waveforms (16 kHz), in input order."""
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    out = [""] * len(waves)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        lp, n = transcriber.log_probs([waves[i] for i in idx], batch_size, bucket_samples)
        for i, text in zip(idx, transcriber.decode(lp, n)):
            out[i] = text
    return out


def _decode(decoder, pcm: Sequence[bytes]) -> list[str]:
    out = []
    for raw in pcm:
        decoder.start_utt()
        decoder.process_raw(raw, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        out.append(" ".join(hyp.hypstr.lower().split()) if hyp is not None else "")
    return out


_WORKER_DECODER = None  # one per pool process, built by _init_worker


def _init_worker(lm_path: str, dict_path: str) -> None:
    global _WORKER_DECODER
    from pocketsphinx import Decoder
    _WORKER_DECODER = Decoder(lm=lm_path, dict=dict_path, samprate=16000, loglevel="FATAL")


def _decode_in_worker(pcm: Sequence[bytes]) -> list[str]:
    return _decode(_WORKER_DECODER, pcm)


class PocketSphinx:
    """pocketsphinx with a domain n-gram LM; ``transcribe(waves)`` -> lowercase transcripts.

    pocketsphinx decodes on one core (~0.2-0.3 s per 1.7 s utterance here); with ``workers``
    > 1 a batch is split into contiguous chunks decoded by that many processes, each with
    its own decoder on the same LM and dictionary files (same transcripts, test). ``close()``
    stops them.
    """

    def __init__(self, lm_sentences: Iterable[str], work_dir: str, workers: int = 1):
        from pocketsphinx import Decoder, get_model_path
        from pocketsphinx.lm import ArpaBoLM
        os.makedirs(work_dir, exist_ok=True)
        sentences = sorted({" ".join(s.lower().split()) for s in lm_sentences if s.strip()})
        if not sentences:
            raise ValueError("PocketSphinx: no LM sentences given")
        words = {w for s in sentences for w in s.split()}
        dict_path = os.path.join(work_dir, "domain.dict")
        known = set()
        with open(get_model_path("en-us/cmudict-en-us.dict")) as f, open(dict_path, "w") as g:
            for line in f:
                head = line.split(" ", 1)[0]
                base = re.sub(r"\(\d+\)$", "", head)
                if base in words:
                    g.write(line)
                    known.add(base)
        self.oov_words = sorted(words - known)
        if self.oov_words:  # the LM must not propose words the dictionary cannot pronounce
            sentences = [" ".join(w for w in s.split() if w in known) for s in sentences]
            sentences = [s for s in sentences if s]
        lm = ArpaBoLM(text="\n".join(sentences), add_start=True)
        lm.compute()
        lm_path = os.path.join(work_dir, "domain.arpa")
        lm.write_file(lm_path)
        self.decoder = Decoder(lm=lm_path, dict=dict_path, samprate=16000, loglevel="FATAL")
        self._paths = (lm_path, dict_path)
        self.workers = max(1, int(workers))
        self._pool = None

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        pcm = [float_to_int16(np.asarray(w, np.float32)).tobytes() for w in waves]
        if self.workers == 1 or len(pcm) < 2 * self.workers:
            return _decode(self.decoder, pcm)
        if self._pool is None:
            # spawn, not fork: the parent runs JAX's threads, which a forked child must not inherit.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=self._paths)
        size = -(-len(pcm) // self.workers)
        chunks = [pcm[i:i + size] for i in range(0, len(pcm), size)]
        return [text for part in self._pool.map(_decode_in_worker, chunks) for text in part]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
