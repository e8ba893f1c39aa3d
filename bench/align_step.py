"""The align train step: ours (JAX, the trainer's own jitted, donated step) vs the same step
written the way a PyTorch user would, interleaved in one process (bench/protocol.py).

    python bench/align_step.py                        # mini sizes, batch 16 x 3 s; ~3 min on 2 cores
    python bench/align_step.py --batch_size 8 --seconds 2 --pairs 3
    python bench/align_step.py --config configs/llama2_7b_chat.py:8xh100 --seconds 10   # one GPU, ours only

Mini sizes, float32, random weights, the same batch on both sides (log-mel of 16 kHz audio,
prompt [4 prefix | audio | 4 suffix | 48 response tokens]):

* ours: the real ``align`` task (train/align.py) and trainer step (train/loop.py): log-mel,
  conformer (d=144 x 4, 32-channel stem, dropout 0.1), projector (stack 2, MLP), splice,
  frozen Llama (d=128 x 4, vocab 1000) forward + backward to the audio embeddings, CE on
  the response + 0.3 x CTC, AdamW on encoder + CTC head + projector;
* PyTorch: log-mel with ``torch.stft`` and the same mel matrix, transformers'
  ``ParakeetEncoder`` of the same size, the same projector and CTC head, a frozen
  transformers ``LlamaForCausalLM`` of the same config fed ``inputs_embeds``, CE + 0.3 x
  ``ctc_loss``, ``torch.optim.AdamW`` + grad clipping, eager.

Prints steps/s of both, the ratio (median of ``--pairs`` pairs, min and max), our step's
matmul GFLOP/s beside the peaks measured in the same run, and the load average.

``--config`` times a paper/pod slice's step on this one device instead (no peer): the
config's frozen LLM (e.g. Llama-2-7B dimensions, scanned, bf16, its remat policy) with random
weights made on the device, the paper conformer of the config's ``plan`` section, at the
config's per-device batch (``--batch_size`` overrides), ``--llm_layers`` to cut the depth;
prints ms/step and MFU against the bf16 matmul peak measured in the same run and the chip's
data sheet. bench/gpu_7b_step.sh runs it on a lent GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import protocol  # noqa: E402

LLM = dict(vocab_size=1000, dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=384, max_seq_len=512)
PREFIX, SUFFIX, RESPONSE, LABELS, CTC_LABELS = 4, 4, 48, 48, 256
CTC_WEIGHT = 0.3


# ---------------------------------------------------------------------------------------
# Ours: the real align task on random mini-sized model directories
# ---------------------------------------------------------------------------------------
def write_mini_models(root: str, dtype: str = "float32") -> dict:
    """Random mini-sized LLM + conformer model directories, a tokenizer and a responses file."""
    from audiochat_jax.audio.features import FeatureConfig
    from audiochat_jax.models import conformer, model_dir
    from audiochat_jax.models.conformer import ConformerConfig
    from audiochat_jax.models.llama import LlamaConfig, init_params
    from audiochat_jax.text.char_vocab import CharVocab
    from audiochat_jax.text.tokenizer import train_sentencepiece
    from audiochat_jax.train import config_files
    words = "what is the capital of france two plus three hello where does anna live red blue".split()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 8)) for _ in range(2000)] + ["[INST] <<SYS>> [/INST]"]
    spm = train_sentencepiece(corpus, os.path.join(root, "spm"), vocab_size=300)
    llm = LlamaConfig(**LLM, dtype=dtype, param_dtype="float32")
    params = nn.unbox(jax.jit(lambda r: init_params(llm, r))(jax.random.key(0)))
    os.makedirs(os.path.join(root, "llm"), exist_ok=True)
    shutil.copyfile(spm, os.path.join(root, "llm", "tokenizer.model"))
    model_dir.save_model_dir(os.path.join(root, "llm"), "llama", llm.to_dict(), params, tokenizer="tokenizer.model")
    mini = config_files.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          "configs", "conformer_mini.py"))
    enc = ConformerConfig.from_dict(dict(mini.encoder.to_dict(), dtype=dtype))
    conformer.save(os.path.join(root, "conformer"), enc, conformer.init_variables(enc, jax.random.key(1)),
                   features=FeatureConfig(n_mels=enc.n_mels).to_dict(), vocab=CharVocab.english().to_dict())
    with open(os.path.join(root, "responses.jsonl"), "w") as f:
        f.write(json.dumps({"id": "x", "response_ids": [5, 2]}) + "\n")
    return {"llm": os.path.join(root, "llm"), "encoder": os.path.join(root, "conformer"),
            "responses": os.path.join(root, "responses.jsonl")}


def random_host_batch(batch_size: int, samples: int, label_length: int, response_length: int,
                      ctc_length: int, vocab_size: int, seed: int = 0) -> dict:
    """An align batch of random audio [b, samples] and token ids (3/4 of each row valid); CTC
    labels at ~12 characters per second of audio (a feasible CTC target)."""
    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(3, vocab_size, (batch_size, n)).astype(np.int32)  # noqa: E731
    full = lambda n: np.full((batch_size,), n, np.int32)  # noqa: E731
    return {"audio": (0.1 * rng.standard_normal((batch_size, samples))).astype(np.float32),
            "audio_lengths": full(samples), "labels": ids(label_length), "label_lengths": full(label_length * 3 // 4),
            "response_ids": ids(response_length), "response_lengths": full(response_length * 3 // 4),
            "valid": np.ones((batch_size,), bool),
            "prefix_ids": ids(PREFIX), "prefix_lengths": full(PREFIX),
            "suffix_ids": ids(SUFFIX), "suffix_lengths": full(SUFFIX),
            "ctc_labels": rng.integers(0, 28, (batch_size, ctc_length)).astype(np.int32),
            "ctc_label_lengths": full(min(ctc_length, int(samples / 16000 * 12)))}


def compiled_step(task, config, mesh, host_batch: dict):
    """``(run, flops)``: ``run()`` executes one step of the trainer's jitted, donated step of
    ``task`` on ``host_batch`` (state carried); ``flops`` = its matmul FLOPs (+ scanned layers)."""
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import flop_count, loop, optimizer, tasks
    patterns = tuple(config.optimizer.frozen_patterns or ()) + tuple(task.frozen_patterns)
    tx, schedule = optimizer.make_optimizer(config, patterns)
    state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
    step = loop.jit_train_step(task, tx, schedule, shardings, mesh, config.grad_accum_steps)
    batch = tasks.device_batch(host_batch, mesh)
    with jax.set_mesh(mesh), sharding.axis_rules():
        lowered = step.lower(state, task.frozen, batch)
        compiled = lowered.compile()
    flops = flop_count.matmul_flops(lowered.as_text(dialect="hlo"))
    if task.uncounted_flops is not None:
        flops += task.uncounted_flops(batch)
    holder = {"state": state}

    def run():
        with jax.set_mesh(mesh), sharding.axis_rules():
            holder["state"], m = compiled(holder["state"], task.frozen, batch)
        return jax.block_until_ready(m["loss"])

    return run, flops


def make_align_step(root: str, batch_size: int, samples: int, host_batch: dict | None = None,
                    dtype: str = "float32"):
    """``(run, flops)`` of the real mini align step on ``host_batch`` (default: random), the
    frozen LLM and the encoder computing in ``dtype``."""
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import align, align_configs
    paths = write_mini_models(root)
    config = align_configs.mini_config()
    config.batch_size, config.total_steps = batch_size, 1000
    config.align.update(llm_dir=paths["llm"], encoder_dir=paths["encoder"], data_dir=root,
                        responses=paths["responses"], max_label_length=LABELS, max_response_length=RESPONSE,
                        max_prefix_length=PREFIX, max_suffix_length=SUFFIX, ctc_weight=CTC_WEIGHT,
                        llm_dtype=dtype, encoder_dtype=dtype)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    task = align.align_task(config, mesh)
    batch = host_batch or random_host_batch(batch_size, samples, LABELS, RESPONSE, CTC_LABELS, 300)
    return compiled_step(task, config, mesh, batch)


# ---------------------------------------------------------------------------------------
# The PyTorch peer
# ---------------------------------------------------------------------------------------
def torch_align_step(batch: dict):
    """``run()``: one AdamW step of the mini align step in PyTorch (see the module docstring)."""
    import librosa
    import torch
    import transformers
    from audiochat_jax.audio.features import FeatureConfig
    torch.manual_seed(0)
    fc = FeatureConfig()
    enc = transformers.ParakeetEncoder(transformers.ParakeetEncoderConfig(
        hidden_size=144, num_hidden_layers=4, num_attention_heads=4, intermediate_size=576, conv_kernel_size=31,
        subsampling_factor=4, subsampling_conv_channels=32, num_mel_bins=80, dropout=0.1,
        attention_dropout=0.1)).train()
    ctc_head = torch.nn.Linear(144, 29)
    projector = torch.nn.Sequential(torch.nn.Linear(2 * 144, 128), torch.nn.GELU(), torch.nn.Linear(128, 128))
    llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=LLM["vocab_size"], hidden_size=LLM["dim"], intermediate_size=LLM["ffn_dim"],
        num_hidden_layers=LLM["n_layers"], num_attention_heads=LLM["n_heads"],
        num_key_value_heads=LLM["n_kv_heads"], max_position_embeddings=LLM["max_seq_len"])).eval()
    for p in llm.parameters():
        p.requires_grad_(False)
    params = [*enc.parameters(), *ctc_head.parameters(), *projector.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    mel = torch.tensor(librosa.filters.mel(sr=fc.sample_rate, n_fft=fc.n_fft, n_mels=fc.n_mels), dtype=torch.float32)
    window = torch.hann_window(fc.win_length)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    b = t["audio"].shape[0]

    def log_mel(audio):
        x = torch.cat([audio[:, :1], audio[:, 1:] - fc.preemphasis * audio[:, :-1]], dim=1)
        spec = torch.stft(x, fc.n_fft, fc.hop_length, fc.win_length, window, center=True, return_complex=True)
        feats = torch.log(mel @ spec.abs().pow(2) + fc.log_guard)  # [b, mels, frames]
        feats = (feats - feats.mean(-1, keepdim=True)) / (feats.std(-1, keepdim=True) + fc.norm_eps)
        return feats.transpose(1, 2)

    embed = llm.get_input_embeddings()

    def run():
        feats = log_mel(t["audio"])
        frames = enc(input_features=feats).last_hidden_state             # [b, T, 144]
        ctc_logp = torch.log_softmax(ctc_head(frames), -1)
        frames = frames[:, : frames.shape[1] // 2 * 2].reshape(b, frames.shape[1] // 2, 288)
        audio = projector(frames)                                         # [b, A, 128]
        resp = t["response_ids"].long()
        x = torch.cat([embed(t["prefix_ids"].long()), audio, embed(t["suffix_ids"].long()), embed(resp)], 1)
        n_resp = resp.shape[1]
        mask = torch.ones(x.shape[:2], dtype=torch.long)
        mask[:, x.shape[1] - n_resp:] = (torch.arange(n_resp)[None] < t["response_lengths"][:, None]).long()
        hidden = llm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        logits = llm.lm_head(hidden[:, x.shape[1] - n_resp - 1:-1])
        weights = mask[:, x.shape[1] - n_resp:].float()
        ce = (torch.nn.functional.cross_entropy(logits.transpose(1, 2), resp, reduction="none") * weights).sum() \
            / weights.sum()
        ctc = torch.nn.functional.ctc_loss(ctc_logp.transpose(0, 1), t["ctc_labels"].long(),
                                           torch.full((b,), ctc_logp.shape[1]), t["ctc_label_lengths"].long(),
                                           blank=28, reduction="mean", zero_infinity=True)
        loss = ce + CTC_WEIGHT * ctc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)

    return run


# ---------------------------------------------------------------------------------------
# A slice config's step on one device (no peer)
# ---------------------------------------------------------------------------------------
def random_like(abstract, seed: int = 0):
    """Arrays of ``abstract``'s shapes, dtypes and shardings, N(0, 0.02^2), made on the devices."""
    leaves, treedef = jax.tree.flatten(abstract)
    keys = list(jax.random.split(jax.random.key(seed), len(leaves)))
    make = jax.jit(lambda ks: [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                               for k, x in zip(ks, leaves)],
                   out_shardings=[x.sharding for x in leaves])
    return jax.tree.unflatten(treedef, make(keys))


def make_config_step(config_arg: str, batch_size: int, samples: int, llm_layers: int = 0):
    """``(run, flops, batch_size, description)`` of a slice config's align step on one device."""
    from audiochat_jax import plan
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import config_files
    config = config_files.load(config_arg)
    per_device = config.batch_size // (config.mesh_shape[0] * config.mesh_shape[1])
    config.batch_size, config.mesh_shape = batch_size or per_device, (1, 1, 1)
    if llm_layers:
        config.llm.n_layers = llm_layers
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    task, llm_cfg = plan.abstract_task(config, mesh)
    task = dataclasses.replace(task, frozen=jax.block_until_ready(random_like(task.frozen)))
    a = config.align
    batch = random_host_batch(config.batch_size, samples, a.max_label_length, a.max_response_length,
                              a.ctc_max_label_length, llm_cfg.vocab_size)
    batch.update(prefix_ids=batch["prefix_ids"][:, :1].repeat(config.plan.prefix_tokens, 1),
                 suffix_ids=batch["suffix_ids"][:, :1].repeat(config.plan.suffix_tokens, 1),
                 prefix_lengths=np.full_like(batch["prefix_lengths"], config.plan.prefix_tokens),
                 suffix_lengths=np.full_like(batch["suffix_lengths"], config.plan.suffix_tokens))
    run, flops = compiled_step(task, config, mesh, batch)
    n_llm = sum(x.size for x in jax.tree.leaves(task.frozen))
    what = (f"{config_arg}: frozen LLM {n_llm / 1e9:.2f}B params ({llm_cfg.n_layers} layers, {llm_cfg.dtype}, "
            f"remat {llm_cfg.remat_policy}), paper conformer d={config.plan.encoder.d_model} x "
            f"{config.plan.encoder.n_layers}, batch {config.batch_size}")
    return run, flops, config.batch_size, what


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", default="", help="a slice config (e.g. configs/llama2_7b_chat.py:8xh100): "
                   "time its step on this device, ours only")
    p.add_argument("--batch_size", type=int, default=0, help="default: 16 (mini), the config's per-device batch")
    p.add_argument("--seconds", type=float, default=0.0, help="audio per utterance (default: 3 mini, 10 --config)")
    p.add_argument("--llm_layers", type=int, default=0, help="with --config: the LLM's depth (0 = the config's)")
    p.add_argument("--pairs", type=int, default=5, help="interleaved pairs (mini) / timed steps (--config)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="mini: our LLM and encoder compute dtype (PyTorch stays float32)")
    args = p.parse_args(argv)
    before = protocol.load()
    print(protocol.machine_line())
    device = jax.devices()[0]
    seconds = args.seconds or (10.0 if args.config else 3.0)
    samples = int(seconds * 16000)
    if args.config:
        from audiochat_jax.parallel.chips import CHIPS
        peak = protocol.matmul_peaks(8192)["jax bf16->f32"]
        run, flops, batch, what = make_config_step(args.config, args.batch_size, samples, args.llm_layers)
        step_s = protocol.median_seconds(run, args.pairs)
        print(f"{what} on {device.device_kind}: {step_s * 1e3:.1f} ms/step, {flops / step_s / 1e12:.1f} TFLOP/s, "
              f"MFU {flops / step_s / peak:.3f} of the measured bf16 peak ({peak / 1e12:.0f} TFLOP/s)")
        for key, chip in CHIPS.items():
            if key in device.device_kind.lower().split():
                print(f"  = {flops / step_s / chip.peak_bf16_flops:.3f} of the {chip.name} data sheet")
        return {"step_s": step_s, "flops": flops}
    protocol.setup_torch_threads()
    peaks = protocol.matmul_peaks()
    batch_size = args.batch_size or 16
    with tempfile.TemporaryDirectory() as root:
        batch = random_host_batch(batch_size, samples, LABELS, RESPONSE, CTC_LABELS, LLM["vocab_size"])
        t0 = time.perf_counter()
        from audiochat_jax.models.llama import auto_compute_dtype
        dtype = auto_compute_dtype() if args.dtype == "auto" else args.dtype
        ours, flops = make_align_step(root, batch_size, samples, batch, dtype)
        print(f"ours: built and compiled in {time.perf_counter() - t0:.1f} s; {flops / 1e9:.2f} GFLOP/step in matmuls")
        pairs = protocol.interleave(ours, torch_align_step(batch), args.pairs)
    print(f"mini align step, batch {batch_size} x {seconds:g} s, ours {dtype}, PyTorch float32:")
    print(pairs.line("align steps/s", 1.0))
    print(f"our step: {statistics.median(pairs.ours) * 1e3:.0f} ms, {flops / statistics.median(pairs.ours) / 1e9:.0f} "
          f"GFLOP/s of matmuls; " + protocol.peaks_line(peaks))
    print(protocol.load_line(before))
    return {"align_step": pairs, "peaks": peaks, "dtype": dtype}


if __name__ == "__main__":
    main()
