"""Conformer encoder forward: ours (JAX, jitted) vs transformers' ParakeetEncoder (PyTorch
eager, ``torch.no_grad``), same CPU, config, weights and padded batch of log-mel features,
interleaved in one process (bench/protocol.py). Audio seconds encoded per wall second.

    python bench/encoder.py                       # mini config, batch 8 x 10 s (~1 min)
    python bench/encoder.py --config paper --layers 4 --batch 4

Both sides get every core the process may use (torch.set_num_threads; XLA's CPU client
uses all cores). Ours computes in ``--dtype`` (float32 by default, as the mini world
trains); prints the ratio over ``--pairs`` pairs, the load and the matmul peaks of the run.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import protocol  # noqa: E402
from audiochat_jax.convert.conformer import hf_key_to_nemo, state_to_variables  # noqa: E402
from audiochat_jax.models import conformer  # noqa: E402

CONFIGS = {
    # configs/conformer_mini.py.
    "mini": dict(d_model=144, n_layers=4, n_heads=4, ffn_dim=576, conv_kernel_size=31, subsampling_factor=4,
                 subsampling_channels=32),
    # configs/conformer_paper.py:paper.
    "paper": dict(d_model=512, n_layers=16, n_heads=8, ffn_dim=2048, conv_kernel_size=9, subsampling_factor=8,
                  subsampling_channels=256),
}


def build(name: str, layers: int | None, vocab: int = 29):
    import torch
    import transformers
    c = dict(CONFIGS[name])
    if layers:
        c["n_layers"] = layers
    enc = dict(hidden_size=c["d_model"], num_hidden_layers=c["n_layers"], num_attention_heads=c["n_heads"],
               intermediate_size=c["ffn_dim"], conv_kernel_size=c["conv_kernel_size"],
               subsampling_factor=c["subsampling_factor"], subsampling_conv_channels=c["subsampling_channels"],
               num_mel_bins=80)
    torch.manual_seed(0)
    hf = transformers.ParakeetForCTC(transformers.ParakeetCTCConfig(
        vocab_size=vocab, encoder_config=enc, pad_token_id=vocab - 1)).eval()
    config = conformer.ConformerConfig(n_mels=80, subsampling="dw_striding", conv_norm="batch_norm",
                                       vocab_size=vocab, **c)
    state = {hf_key_to_nemo(k): v.numpy() for k, v in hf.state_dict().items()}
    variables = state_to_variables(state, config, "bench")
    return config, variables, hf


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mini")
    parser.add_argument("--layers", type=int, help="override the number of conformer blocks")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance (10 ms frames)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="our compute dtype (torch runs float32)")
    args = parser.parse_args(argv)

    import torch
    threads = protocol.setup_torch_threads()
    before = protocol.load()
    print(protocol.machine_line())
    peaks = protocol.matmul_peaks()
    config, variables, hf = build(args.config, args.layers)
    config = conformer.ConformerConfig.from_dict(dict(config.to_dict(), dtype=args.dtype))

    frames = int(args.seconds * 100)
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(frames // 2, frames + 1, size=args.batch))[::-1].copy()
    lengths[0] = frames
    feats = rng.standard_normal((args.batch, frames, 80)).astype(np.float32)
    feats[np.arange(frames)[None, :] >= lengths[:, None]] = 0
    audio_seconds = float(lengths.sum()) / 100

    encoder = conformer.ConformerEncoder(config)
    fwd = jax.jit(lambda v, x, n: encoder.apply(v, x, n))
    enc_vars = {k: v["encoder"] for k, v in variables.items()}
    x, n = jnp.asarray(feats), jnp.asarray(lengths, jnp.int32)
    ours = lambda: jax.block_until_ready(fwd(enc_vars, x, n))  # noqa: E731

    tx = torch.from_numpy(feats)
    tmask = torch.from_numpy(np.arange(frames)[None, :] < lengths[:, None])

    def torch_fwd():
        with torch.no_grad():
            hf.encoder(input_features=tx, attention_mask=tmask)

    pairs = protocol.interleave(ours, torch_fwd, args.pairs)
    n_params = conformer.param_count({"params": enc_vars["params"]})
    print(f"config={args.config} layers={config.n_layers} d_model={config.d_model} params={n_params / 1e6:.2f}M "
          f"batch={args.batch} longest={args.seconds:g}s audio={audio_seconds:.1f}s threads={threads} "
          f"ours {args.dtype}, torch float32")
    print(pairs.line(f"encoder ({args.config}) audio s/s", audio_seconds))
    print(protocol.peaks_line(peaks))
    print(protocol.load_line(before))
    return {"encoder": pairs, "audio_seconds": audio_seconds}


if __name__ == "__main__":
    main()
