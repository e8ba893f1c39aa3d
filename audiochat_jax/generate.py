"""`python -m audiochat_jax.generate --ckpt DIR --tokenizer FILE --prompt TEXT`: chat with a Llama.

Wraps the prompt in the Llama-2 chat template (``[INST] <<SYS>> ... [/INST]``; ``--raw``
skips it), generates with the KV cache and prints the reply. ``--prompt`` may be repeated:
the prompts run as one left-padded batch and the replies print one per line. ``--json``
prints ``{"prompt_ids", "ids", "text"}`` per prompt instead (ids include the EOS if produced).

    python -m audiochat_jax.convert llama --src Llama-2-7b-chat-hf --out work/llama7b
    python -m audiochat_jax.generate --ckpt work/llama7b \\
        --tokenizer Llama-2-7b-chat-hf/tokenizer.model --prompt "Name three colours."
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from audiochat_jax.models.model_dir import load_model_dir
from audiochat_jax.models.generate import generate
from audiochat_jax.models.llama import LlamaConfig
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.text.tokenizer import Tokenizer


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> (tokens [batch, max_len] int32, mask [batch, max_len] bool), left-padded."""
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return tokens, mask


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m audiochat_jax.generate",
                                description="Generate a chat reply with a converted/trained Llama.")
    p.add_argument("--ckpt", required=True, help="model directory (kind 'llama') from convert or the trainer")
    p.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model")
    p.add_argument("--prompt", required=True, action="append",
                   help="user message (repeat for a batch of independent prompts)")
    p.add_argument("--system", default=None, help="optional system prompt")
    p.add_argument("--raw", action="store_true", help="no chat template: BOS + the prompt text")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print token ids as JSON lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tok = Tokenizer(args.tokenizer)
    meta, params = load_model_dir(args.ckpt, "llama")
    config = LlamaConfig.from_dict(meta["config"])
    if tok.vocab_size > config.vocab_size:
        raise SystemExit(f"error: tokenizer {args.tokenizer} has {tok.vocab_size} pieces but the model in "
                         f"{args.ckpt} only {config.vocab_size}; pass the tokenizer it was trained with")
    if args.raw:
        rows = [tok.encode(p, bos=True) for p in args.prompt]
    else:
        rows = [encode_dialog(tok, [{"role": "user", "content": p}], system=args.system).ids
                for p in args.prompt]
    tokens, mask = left_pad(rows, tok.pad_id)
    max_new = min(args.max_new_tokens, config.max_seq_len - tokens.shape[1])
    if max_new < 1:
        raise SystemExit(f"error: the prompt ({tokens.shape[1]} tokens) fills the model's "
                         f"max_seq_len={config.max_seq_len}; shorten it")
    out, lengths = generate(config, params, tokens=tokens, mask=mask, max_new_tokens=max_new,
                            eos_id=tok.eos_id, pad_id=tok.pad_id, rng=jax.random.key(args.seed),
                            temperature=args.temperature, top_p=args.top_p)
    out, lengths = np.asarray(out), np.asarray(lengths)
    for row, new, n in zip(rows, out, lengths):
        ids = new[:n].tolist()
        text = tok.decode([t for t in ids if t != tok.eos_id])
        if args.json:
            print(json.dumps({"prompt_ids": row, "ids": ids, "text": text}))
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
