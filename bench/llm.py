"""Llama prefill and KV-cache decode throughput: ours (JAX) vs transformers PyTorch, same CPU.

    python bench/llm.py                       # 8 layers, d=1024, vocab 32000; ~1-2 min
    python bench/llm.py --dtype float32       # our float32 compute instead of bf16

Both sides use the same architecture with random weights. PyTorch runs transformers'
``LlamaForCausalLM`` in float32 (its CPU default; ``--torch_dtype bfloat16`` to change);
ours computes in ``--dtype`` (default bfloat16 with float32 accumulation, the fast path on
AVX-512-bf16 CPUs, see ENV-NOTES) from bfloat16-cast weights.

* prefill tokens/s: one forward over ``--batch x --prompt_len`` tokens producing the
  last position's logits (what generation needs; transformers ``logits_to_keep=1``).
* decode tokens/s: ``--new_tokens`` greedy tokens per row after a ``--decode_prompt``-token
  prompt, measured as (generate time - prefill time) on both sides.

Medians of ``--repeats`` timed runs after one warm-up (compile) run. The machine is shared:
compare the ratios printed in one run, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from audiochat_jax.models.generate import cast_for_inference, generate  # noqa: E402
from audiochat_jax.models.llama import Llama, LlamaConfig, init_params  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_params(cfg, seed=0):
    """numpy-drawn weights (compiling a threefry init is slower than the whole benchmark)."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), length=2)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(np.ones(s.shape, np.float32) if s.ndim == 1 else
                              rng.standard_normal(s.shape, np.float32) * 0.02), shapes)


def bench_ours(cfg, args):
    params = jax.jit(lambda p: cast_for_inference(p, cfg))(random_params(cfg))
    model = Llama(cfg)
    rng = np.random.default_rng(1)

    @jax.jit
    def prefill(p, tokens):
        b, l = tokens.shape
        h = model.apply({"params": p}, tokens, positions=jnp.broadcast_to(jnp.arange(l), (b, l)),
                        mask=jnp.ones((b, l), bool), method=Llama.hidden_states)
        return model.apply({"params": p}, h[:, -1:], method=Llama.logits)

    tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    t_prefill = median_time(lambda: prefill(params, tokens).block_until_ready(), args.repeats)

    dtok = rng.integers(3, cfg.vocab_size, (args.batch, args.decode_prompt)).astype(np.int32)
    mask = np.ones_like(dtok, bool)
    t_short = median_time(lambda: prefill(params, dtok).block_until_ready(), args.repeats)
    t_gen = median_time(lambda: generate(cfg, params, tokens=dtok, mask=mask, max_new_tokens=args.new_tokens,
                                         eos_id=-1)[0].block_until_ready(), args.repeats)
    return args.batch * args.prompt_len / t_prefill, args.batch * args.new_tokens / (t_gen - t_short)


def bench_torch(cfg, args):
    import torch
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM
    torch.manual_seed(0)
    dtype = getattr(torch, args.torch_dtype)
    hf = LlamaForCausalLM(HFConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps)).to(dtype).eval()
    rng = np.random.default_rng(1)
    tokens = torch.tensor(rng.integers(3, cfg.vocab_size, (args.batch, args.prompt_len)))
    dtok = torch.tensor(rng.integers(3, cfg.vocab_size, (args.batch, args.decode_prompt)))
    with torch.inference_mode():
        t_prefill = median_time(lambda: hf(tokens, logits_to_keep=1), args.repeats)
        t_short = median_time(lambda: hf(dtok, logits_to_keep=1), args.repeats)
        t_gen = median_time(lambda: hf.generate(
            dtok, attention_mask=torch.ones_like(dtok), max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0), args.repeats)
    return args.batch * args.prompt_len / t_prefill, args.batch * args.new_tokens / (t_gen - t_short)


def main(argv=None):
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
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--torch_dtype", default="float32", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    cfg = LlamaConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, ffn_dim=args.ffn, dtype=args.dtype,
                      param_dtype="float32")
    print(f"config: {args.layers} layers, d={args.dim}, heads={args.heads}/{args.kv_heads}, "
          f"ffn={args.ffn}, vocab={args.vocab}; batch={args.batch}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cores")
    t = time.time()
    ours = bench_ours(cfg, args)
    t_ours = time.time() - t
    t = time.time()
    theirs = bench_torch(cfg, args)
    print(f"(ours {t_ours:.0f} s incl. compile, torch {time.time() - t:.0f} s)")
    print(f"{'':10s} {'ours (' + args.dtype + ')':>18s} {'torch (' + args.torch_dtype + ')':>18s} {'ratio':>7s}")
    for name, a, b in (("prefill", ours[0], theirs[0]), ("decode", ours[1], theirs[1])):
        print(f"{name + ' tok/s':14s} {a:14.1f} {b:18.1f} {a / b:7.2f}x")


if __name__ == "__main__":
    main()
