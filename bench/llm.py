"""Llama prefill and KV-cache decode: ours (JAX) vs transformers' LlamaForCausalLM (PyTorch),
same CPU, same architecture, random weights, interleaved in one process (bench/protocol.py).

    python bench/llm.py                       # 8 layers, d=1024, vocab 32000; ~2 min on 2 cores
    python bench/llm.py --dtype float32       # force our compute dtype (default: auto)

Ours computes in ``--dtype`` (``auto``: bfloat16 on CPUs with native bf16 dots, float32
otherwise; models/llama.py ``auto_compute_dtype``) from float32 weights cast once; PyTorch runs
float32, its CPU default (``--torch_dtype`` to change).

* prefill: one forward over ``--batch x --prompt_len`` tokens giving the last position's
  logits (what generation needs; transformers ``logits_to_keep=1``), tokens/s;
* decode: ``--new_tokens`` greedy tokens per row after a ``--decode_prompt``-token prompt
  (generate time minus that prompt's prefill), tokens/s.

Prints the ratio (median of ``--pairs`` interleaved pairs, with min and max), our prefill's
achieved GFLOP/s beside this machine's matmul peaks measured in the same run, and the load.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import protocol  # noqa: E402
from audiochat_jax.models.generate import cast_for_inference, generate  # noqa: E402
from audiochat_jax.models.llama import Llama, LlamaConfig, auto_compute_dtype, init_params, layer_flops  # noqa: E402


def random_params(cfg, seed=0):
    """numpy-drawn weights (compiling a threefry init is slower than the whole benchmark)."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), length=2)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(np.ones(s.shape, np.float32) if s.ndim == 1 else
                              rng.standard_normal(s.shape, np.float32) * 0.02), shapes)


def ours(cfg, args):
    """(prefill(), decode()) callables that block until done."""
    params = jax.jit(lambda p: cast_for_inference(p, cfg))(random_params(cfg))
    model = Llama(cfg)
    rng = np.random.default_rng(1)

    @jax.jit
    def prefill(p, tokens):
        b, n = tokens.shape
        h = model.apply({"params": p}, tokens, positions=jnp.broadcast_to(jnp.arange(n), (b, n)),
                        mask=jnp.ones((b, n), bool), method=Llama.hidden_states)
        return model.apply({"params": p}, h[:, -1:], method=Llama.logits)

    tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    dtok = rng.integers(3, cfg.vocab_size, (args.batch, args.decode_prompt)).astype(np.int32)
    mask = np.ones_like(dtok, bool)
    return (lambda: prefill(params, tokens).block_until_ready(),
            lambda: prefill(params, dtok).block_until_ready(),
            lambda: generate(cfg, params, tokens=dtok, mask=mask, max_new_tokens=args.new_tokens,
                             eos_id=-1)[0].block_until_ready())


def torch_peer(cfg, args):
    import torch
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM
    torch.manual_seed(0)
    hf = LlamaForCausalLM(HFConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps)).to(getattr(torch, args.torch_dtype)).eval()
    rng = np.random.default_rng(1)
    tokens = torch.tensor(rng.integers(3, cfg.vocab_size, (args.batch, args.prompt_len)))
    dtok = torch.tensor(rng.integers(3, cfg.vocab_size, (args.batch, args.decode_prompt)))

    def run(fn):
        def go():
            with torch.inference_mode():
                fn()
        return go
    return (run(lambda: hf(tokens, logits_to_keep=1)), run(lambda: hf(dtok, logits_to_keep=1)),
            run(lambda: hf.generate(dtok, attention_mask=torch.ones_like(dtok), max_new_tokens=args.new_tokens,
                                    min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv_heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=256, help="prefill length")
    p.add_argument("--decode_prompt", type=int, default=16, help="prompt length before decoding")
    p.add_argument("--new_tokens", type=int, default=48)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--torch_dtype", default="float32", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    protocol.setup_torch_threads()
    before = protocol.load()
    dtype = auto_compute_dtype() if args.dtype == "auto" else args.dtype
    cfg = LlamaConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, ffn_dim=args.ffn, dtype=dtype, param_dtype="float32")
    print(protocol.machine_line())
    print(f"config: {args.layers} layers, d={args.dim}, heads={args.heads}/{args.kv_heads}, ffn={args.ffn}, "
          f"vocab={args.vocab}, batch={args.batch}; ours {dtype} ({args.dtype}), torch {args.torch_dtype}")
    peaks = protocol.matmul_peaks()
    (o_pre, o_short, o_gen), (t_pre, t_short, t_gen) = ours(cfg, args), torch_peer(cfg, args)
    prefill = protocol.interleave(o_pre, t_pre, args.pairs)
    # decode = generate minus the prompt's prefill, per pair
    short = protocol.interleave(o_short, t_short, args.pairs)
    gen = protocol.interleave(o_gen, t_gen, args.pairs)
    decode = protocol.Pairs([g - s for g, s in zip(gen.ours, short.ours)],
                            [g - s for g, s in zip(gen.peer, short.peer)])
    tokens = args.batch * args.prompt_len
    print(prefill.line("prefill tok/s", tokens))
    print(decode.line("decode tok/s", args.batch * args.new_tokens))
    flops = args.batch * (cfg.n_layers * layer_flops(cfg, args.prompt_len) + 2 * cfg.dim * cfg.vocab_size)
    achieved = flops / np.median(prefill.ours)
    print(f"our prefill: {achieved / 1e9:.0f} GFLOP/s of matmuls; " + protocol.peaks_line(peaks))
    print(protocol.load_line(before))
    return {"prefill": prefill, "decode": decode, "dtype": dtype, "gflops": achieved / 1e9, "peaks": peaks}


if __name__ == "__main__":
    main()
