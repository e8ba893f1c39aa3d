"""Peak memory and wall time vs audio length: windowed encoding (models/long_audio.py) vs the
whole recording in one call, measured in the same run; prints a table and whole/windowed ratios.

    python bench/long_audio.py                                  # 30 s .. 10 min, mini conformer
    python bench/long_audio.py --lengths 5,10 --chunk_seconds 4 --overlap_seconds 1  # a quick check
    python bench/long_audio.py --model_dir work/mini/align/model  # an exported speech_llm

Model: configs/conformer_mini.py's encoder (d=144, 4 blocks, 4x subsampling) + an MLP projector
(stack 2 -> 128, the mini LLM's width) with random parameters, or the embedder of a
``speech_llm`` directory. Audio: deterministic noise-modulated tones (content does not change
memory or time; it does change the deviation column only through the random model).

Per length and mode (``whole`` | ``windowed``), each in its own subprocess (``--in_process``
runs them here instead, without RSS):
* ``exec MB``: the compiled executables' ``memory_analysis()`` (temp + arguments + outputs);
  windowed = the larger of its log-mel executable (grows linearly with length) and its
  per-window executable (fixed by ``--chunk_seconds``);
* ``peak RSS MB``: the subprocess's ``ru_maxrss`` minus its RSS after setup (imports, params);
  it includes XLA's compilation of the executables, which is itself large for long inputs;
* ``run s``: median wall time of ``--iters`` encodings after a warm-up (compile excluded).
Whole-recording runs above ``--max_whole_seconds`` are compiled only (their memory analysis is
exact without allocating); a run that fails (out of memory, killed) is reported as such.
``dev`` is max |windowed - whole| / max |whole| over the embeddings when both ran: the
approximation error of windows for this (global-attention) encoder.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

SR = 16000
MB = 1 << 20


def wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    return (0.3 * env * np.sin(2 * np.pi * (200 + 100 * np.sin(0.1 * t)) * t)
            + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def build(model_dir: str):
    """-> (embedder, variables, FeatureConfig)."""
    import jax
    import jax.numpy as jnp
    from audiochat_jax.audio.features import FeatureConfig
    from audiochat_jax.models import speech_llm
    from audiochat_jax.models.conformer import ConformerConfig
    from audiochat_jax.models.projector import ProjectorConfig
    if model_dir:
        from audiochat_jax.models import model_dir as md
        meta, variables = md.load_model_dir(model_dir, speech_llm.KIND)
        spec = speech_llm.SpeechLLMConfig.from_dict(meta["config"])
        return spec.embedder(), variables, FeatureConfig.from_dict(spec.features)
    from audiochat_jax.train import config_files
    c = config_files.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                       "conformer_mini.py"))
    enc_fields = {k: v for k, v in c.encoder.to_dict().items() if k != "kind"}
    enc = ConformerConfig.from_dict({**enc_fields, "dropout": 0.0, "attention_dropout": 0.0})
    emb = speech_llm.AudioEmbedder(enc, ProjectorConfig(in_dim=enc.d_model, out_dim=128, stack=2, kind="mlp"))
    feats = FeatureConfig.from_dict(c.features.to_dict())
    variables = jax.jit(emb.init)(jax.random.key(0), jnp.zeros((1, 64, enc.n_mels)), jnp.array([64]))
    return emb, __import__("flax").linen.unbox(variables), feats


def exec_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(mode: str, seconds: float, args, save: str | None) -> dict:
    """One (mode, length) in this process -> its numbers."""
    import jax
    import jax.numpy as jnp
    from audiochat_jax.models import long_audio, speech_llm
    emb, variables, fc = build(args.model_dir)
    w = wave(seconds)
    setup_rss = current_rss_mb()
    out = {"mode": mode, "seconds": seconds, "setup_rss_mb": setup_rss}
    t0 = time.perf_counter()
    if mode == "whole":
        fn = jax.jit(lambda v, x, n: speech_llm.embed_audio(emb, v, fc, x, n)["embeddings"])
        x, n = jnp.asarray(w)[None], jnp.array([len(w)], jnp.int32)
        compiled = fn.lower(variables, x, n).compile()
        out["exec_mb"] = exec_bytes(compiled) / MB
        out["compile_s"] = time.perf_counter() - t0
        if seconds > args.max_whole_seconds:
            out["status"] = f"compiled only (> {args.max_whole_seconds:g} s)"
            return out
        run = lambda: np.asarray(compiled(variables, x, n))[0]  # noqa: E731
    else:
        w_emb, o_emb = long_audio.window_embeddings(emb, args.chunk_seconds, args.overlap_seconds, fc)
        frames = w_emb * long_audio.frames_per_embedding(emb)
        win = long_audio._embed_windows.lower(
            variables, jax.ShapeDtypeStruct((args.batch_windows, frames, fc.n_mels), jnp.float32),
            jax.ShapeDtypeStruct((args.batch_windows,), jnp.int32), embedder=emb).compile()
        bucket = (w_emb - o_emb) * long_audio.frames_per_embedding(emb) * fc.hop_length
        padded = -(-len(w) // bucket) * bucket
        mel = long_audio._features.lower(jax.ShapeDtypeStruct((padded,), jnp.float32),
                                         jax.ShapeDtypeStruct((), jnp.int32), config=fc).compile()
        out["exec_window_mb"], out["exec_logmel_mb"] = exec_bytes(win) / MB, exec_bytes(mel) / MB
        out["exec_mb"] = max(out["exec_window_mb"], out["exec_logmel_mb"])
        run = lambda: long_audio.encode_long(emb, variables, fc, w, chunk_seconds=args.chunk_seconds,  # noqa: E731
                                             overlap_seconds=args.overlap_seconds, batch_windows=args.batch_windows)
        out["compile_s"] = time.perf_counter() - t0
    try:
        result = run()  # warm-up (the windowed path compiles here; its AOT lowering above is separate)
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - t)
    except Exception as e:  # noqa: BLE001  (an OOM is a result to report, not a crash)
        out["status"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        return out
    out["run_s"] = statistics.median(times)
    out["embeddings"] = int(result.shape[0])
    out["status"] = "ok"
    if save:
        np.save(save, np.asarray(result, np.float32))
    return out


def in_subprocess(mode: str, seconds: float, args, save: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{mode}:{seconds}", "--save", save,
           "--chunk_seconds", str(args.chunk_seconds), "--overlap_seconds", str(args.overlap_seconds),
           "--batch_windows", str(args.batch_windows), "--iters", str(args.iters),
           "--max_whole_seconds", str(args.max_whole_seconds)] + (["--model_dir", args.model_dir]
                                                                 if args.model_dir else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
        return {"mode": mode, "seconds": seconds, "status": f"killed/failed (rc {proc.returncode}): {tail}"}
    out = json.loads(lines[-1])
    out["peak_rss_mb"] = out.pop("maxrss_mb") - out["setup_rss_mb"]
    return out


def fmt(x, spec=".1f") -> str:
    return "–" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="30,60,120,300,600", help="audio lengths in seconds, comma-separated")
    parser.add_argument("--chunk_seconds", type=float, default=30.0)
    parser.add_argument("--overlap_seconds", type=float, default=4.0)
    parser.add_argument("--batch_windows", type=int, default=1)
    parser.add_argument("--iters", type=int, default=1, help="timed encodings per length (median)")
    parser.add_argument("--max_whole_seconds", type=float, default=300.0,
                        help="longer whole-recording runs are compiled (memory analysis) but not run")
    parser.add_argument("--model_dir", default="", help="a speech_llm directory (default: random mini conformer)")
    parser.add_argument("--in_process", action="store_true", help="no subprocesses (and so no per-length RSS)")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunk_seconds <= args.overlap_seconds:
        parser.error("need --chunk_seconds > --overlap_seconds (a window must hold more than its overlap)")

    if args.worker:  # one measurement, reported as a JSON line
        mode, seconds = args.worker.split(":")
        out = measure(mode, float(seconds), args, args.save or None)
        out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps(out), flush=True)
        return 0

    lengths = [float(x) for x in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            pair = {}
            for mode in ("windowed", "whole"):
                save = os.path.join(tmp, f"{mode}-{seconds}.npy")
                r = measure(mode, seconds, args, save) if args.in_process else in_subprocess(mode, seconds, args, save)
                pair[mode] = r
                print(f"  {seconds:g} s {mode}: {r.get('status')}", file=sys.stderr, flush=True)
            a, b = (os.path.join(tmp, f"{m}-{seconds}.npy") for m in ("windowed", "whole"))
            dev = None
            if os.path.exists(a) and os.path.exists(b):
                x, y = np.load(a), np.load(b)
                dev = float(np.abs(x - y).max() / np.abs(y).max()) if x.shape == y.shape else float("nan")
            rows.append({"seconds": seconds, "windowed": pair["windowed"], "whole": pair["whole"], "dev": dev})

    print(f"\nwindows of {args.chunk_seconds:g} s, overlap {args.overlap_seconds:g} s, "
          f"{args.batch_windows} per call; model: {args.model_dir or 'random mini conformer'}")
    head = ("| audio s | windowed exec MB (log-mel / window) | whole exec MB | exec ratio whole/windowed | "
            "windowed peak RSS MB | whole peak RSS MB | RSS ratio | windowed run s | whole run s | "
            "time ratio | dev | whole status |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        c, w = r["windowed"], r["whole"]
        ratio = lambda k: (w[k] / c[k]) if w.get(k) and c.get(k) else None  # noqa: E731
        print(f"| {r['seconds']:g} | {fmt(c.get('exec_mb'))} ({fmt(c.get('exec_logmel_mb'))} / "
              f"{fmt(c.get('exec_window_mb'))}) | {fmt(w.get('exec_mb'))} | {fmt(ratio('exec_mb'), '.2f')} | "
              f"{fmt(c.get('peak_rss_mb'))} | {fmt(w.get('peak_rss_mb'))} | {fmt(ratio('peak_rss_mb'), '.2f')} | "
              f"{fmt(c.get('run_s'), '.3f')} | {fmt(w.get('run_s'), '.3f')} | {fmt(ratio('run_s'), '.2f')} | "
              f"{fmt(r['dev'], '.3g')} | {w.get('status')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
