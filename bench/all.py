"""Every bench, one after the other, and the markdown table docs/performance.md shows.

    python bench/all.py                          # ~6 min on 2 cores
    python bench/all.py --out bench_table.md --quick

Runs (each interleaves ours and its peer in one process: bench/protocol.py) LLM prefill and
decode vs transformers (bench/llm.py), the conformer encoder vs transformers Parakeet at the
mini and paper shapes (bench/encoder.py), the mini align step vs its PyTorch peer
(bench/align_step.py), the input pipeline vs the step that consumes it (bench/input.py), and
the server's first-token latency and tokens/s (bench/serve.py, when ``--ckpt`` or
work/mini/align/model exists). The table carries the machine (CPU model and flags, cores),
the versions, the date, the load before and after, and the matmul peaks of the run.
``--quick`` runs fewer pairs and smaller shapes (a smoke test of the benches, not a result).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import protocol  # noqa: E402


def _run(name, fn, argv, log):
    print(f"\n==== {name}: {' '.join(argv)}", flush=True)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        result = fn(argv)
    log.append(buf.getvalue())
    print(buf.getvalue() + f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return result


def _row(what, pairs, unit, work=1.0, note=""):
    import statistics
    o, p = work / statistics.median(pairs.ours), work / statistics.median(pairs.peer)
    return (f"| {what} | {o:.1f} {unit} | {p:.1f} {unit} | **{pairs.ratio:.2f}x** "
            f"[{min(pairs.ratios):.2f}, {max(pairs.ratios):.2f}] | {note} |")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--ckpt", default="work/mini/align/model", help="speech_llm directory for the server bench")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small shapes, 2 pairs: checks the benches run")
    args = p.parse_args(argv)
    import align_step
    import encoder
    import input as input_bench
    import llm
    before = protocol.load()
    pairs = ["--pairs", str(2 if args.quick else args.pairs)]
    log = []
    small = args.quick
    res = {}
    res["llm"] = _run("llm", llm.main, pairs + (["--layers", "2", "--new_tokens", "8"] if small else []), log)
    res["enc_mini"] = _run("encoder mini", encoder.main, pairs + (["--batch", "2", "--seconds", "3"] if small else []), log)
    res["enc_paper"] = _run("encoder paper", encoder.main, pairs + ["--config", "paper", "--layers", "1" if small else "4",
                                                                    "--batch", "2" if small else "4"], log)
    res["align"] = _run("align step", align_step.main, pairs + (["--batch_size", "4", "--seconds", "2"] if small else []), log)
    res["align_auto"] = _run("align step, dtype auto", align_step.main,
                             pairs + ["--dtype", "auto"] + (["--batch_size", "4", "--seconds", "2"] if small else []), log)
    res["input"] = _run("input", input_bench.main, ["--num_batches", "3" if small else "20"], log)
    if os.path.exists(os.path.join(args.ckpt, "config.json")):
        import serve
        res["serve"] = _run("serve", serve.main, ["--ckpt", args.ckpt, "--requests", "2" if small else "5"], log)
    after = protocol.load()
    peaks = res["llm"]["peaks"]
    lines = [f"`python bench/all.py{' --quick' if small else ''}` — {protocol.machine_line().removeprefix('machine: ')}",
             "", f"Load average (1 min): {before:.2f} at the start, {after:.2f} at the end, {protocol.cores()} cores"
             + ("" if max(before, after) <= protocol.cores() else " — **loaded: not a result**")
             + ". " + protocol.peaks_line(peaks) + ".", "",
             "| bench | ours | peer | ours / peer [min, max] | notes |", "|---|---|---|---|---|",
             _row("LLM prefill (8 layers, d=1024, 256 tokens)", res["llm"]["prefill"], "tok/s",
                  256, f"ours {res['llm']['dtype']} (auto), torch f32; ours "
                  f"{res['llm']['gflops']:.0f} GFLOP/s"),
             _row("LLM decode (48 tokens)", res["llm"]["decode"], "tok/s", 8 if small else 48, "greedy, KV cache"),
             _row("conformer encoder, mini", res["enc_mini"]["encoder"], "audio s/s", res["enc_mini"]["audio_seconds"],
                  "f32 both, batch 8, up to 10 s"),
             _row("conformer encoder, paper (4 blocks)", res["enc_paper"]["encoder"], "audio s/s",
                  res["enc_paper"]["audio_seconds"], "f32 both, batch 4, up to 10 s"),
             _row("align train step, mini", res["align"]["align_step"], "steps/s", 1.0,
                  "f32 both, batch 16 x 3 s, vs eager PyTorch + AdamW"),
             _row("align train step, mini, ours `auto`", res["align_auto"]["align_step"], "steps/s", 1.0,
                  f"ours {res['align_auto']['dtype']} (LLM + encoder), PyTorch f32")]
    lines.append(f"| input pipeline | {res['input']['pipeline']:.0f} ex/s | step consumes {res['input']['consumed']:.0f} "
                 f"ex/s | **{res['input']['pipeline'] / res['input']['consumed']:.1f}x** | vs the align step it feeds |")
    if "serve" in res:
        for kind, r in res["serve"].items():
            lines.append(f"| server, {kind} request | first token {r['first_token_s'] * 1e3:.0f} ms | – | – | "
                         f"then {r['tokens_per_s']:.0f} tokens/s streamed |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n<details><summary>full output</summary>\n\n```\n" + "".join(log) + "```\n</details>\n")
    return table


if __name__ == "__main__":
    main()
