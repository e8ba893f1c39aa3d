#!/usr/bin/env bash
# The 7B align step on one lent GPU: the checks a GPU session should run, prepared so that they
# fit the device tool's budget (15 min of device time a session, 10 min a command).
#
#   bash bench/gpu_7b_step.sh [PART ...]       # default: baseline profile
#
# Next on a GPU (after stop 24, docs/performance.md "On the H100 at the config's batch"): the
# scanned LLM's weight copies, `GPU7B_DEADLINE=540 bash bench/gpu_7b_step.sh baseline
# llm_unrolled lhs dbuffer` (timeout_s 600); then `baseline attn_jax` (stop 26's attention).
#
# PARTs (each under its own time limit; the log of each goes to $OUT/PART.log as it runs, so a
# part cut short still leaves what it printed):
#   baseline    the step as configs/llama2_7b_chat.py:8xh100 sets it (scanned conformer): compile
#               time, ms/step, MFU. Compare the compile with 158.5 s (unrolled conformer, H100).
#   profile     op time by model part, CUDA graphs off so every kernel is named (docs/performance.md,
#               "On a GPU, profile without CUDA graphs"): where the time beyond the matmuls goes.
#   remat_none  --set align.llm_remat_policy=none: no recompute in the frozen LLM's backward.
#               The planner (python -m audiochat_jax.plan, 1 device) puts it at 30.4 GiB at
#               batch 8 x 10 s and 57.5 GiB at 8 x 35 s, vs 22.2 / 31.4 GiB with dots_no_batch
#               (stop 21).
#   cudnn       --set llm.attention_impl=cudnn (odd lengths are padded to even; not yet run on a GPU).
#   attn_jax    --set llm.attention_impl=jax_xla: jax.nn.dot_product_attention's own "xla" version,
#               as every GPU run up to stop 25 had it. Stop 26 wrote it out as 4-D einsums (0.986
#               of the mini step's time on CPU); beside baseline, says whether the GPU cares.
#   batch16     --batch_size 16 (stop 20: 311.7 ms/step, MFU 0.532 of the measured peak, with
#               the backward's matmuls in bf16; 440.2 ms, 0.385 before. Stop 24: 311.0 ms, 0.525
#               counting matmuls; at the config's batch 4, 116.7 ms, 0.336).
#   batch8      --batch_size 8: between the config's 4 (0.336) and 16 (0.525), for the curve.
#   unrolled    --set plan.encoder.scan_layers=false: the compile time the scan saves, and the
#               step time it costs or saves (on CPU: 0.91x the unrolled step at batch 8 x 10 s).
#   dsfusion    XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true: meant to let cuBLAS read a
#               scanned layer's weights in place of the stacked [32, ...] array instead of a copy
#               per layer. Stop 24: no change (116.8 vs 116.7 ms at batch 4, 311.2 vs 311.0 at 16);
#               the profile still shows the copies (docs/performance.md, stop 24).
#   llm_unrolled --set llm.scan_layers=false: the LLM's 32 layers unrolled, each layer's weights
#               its own array, so no per-layer weight slice and no stacked residuals to copy
#               (about 31 ms a step of copies at batch 4, stop 24). Not yet run on a GPU. Its
#               compile on CPU (the plan, 32 layers) took 42.2 s against 32.2 s scanned; time it.
#               A training run takes the same setting (align.llm_scan_layers).
#   lhs         XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true: schedules async work (the
#               copies above run as async fusions on copy streams) to overlap compute; stop 24's
#               profile had 34% of their time beside compute kernels. A hypothesis.
#   dbuffer     XLA_FLAGS=--xla_gpu_enable_while_loop_double_buffering=true: unrolls the scanned
#               layer loop by two so one layer's weight copy can run beside the other's matmuls.
#               A hypothesis; the compile grows.
#   select_skip --set nonfinite_skip=select: the non-finite guard as a select per state array,
#               as up to stop 20 (XLA then copies the Adam moments every step: 1220 arrays in
#               this step's HLO on CPU; stop 20's step copied 1504; its profile's 1303
#               device memcpys were most likely the scanned LLM's, stop 24) against the default
#               conditional (no copies, but XLA:GPU reads the predicate on the host mid-step). Run it beside baseline: the
#               pair says which costs more on this GPU; the bench prints the copied arrays.
#               Stop 24: select 119.1 ms (1518 arrays copied) against the conditional's 116.7.
# A part takes 1.5-2.5 min on an H100 (2026-11-27: compile 63-95 s with the scanned conformer,
# the profile part 138 s), so four fit one command: e.g. `GPU7B_DEADLINE=560 bash
# bench/gpu_7b_step.sh profile batch16 remat_none dsfusion` with timeout_s 600 ran in 463 s.
#
# Before the first call, in this repo here (the GPU image lacks these wheels; the rest of the
# stack — jax 0.11.2, flax, optax, orbax, sentencepiece — is there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ml_collections jiwer rapidfuzz zstandard librosa==0.11.0 audioread decorator soundfile cffi \
#     pycparser pooch platformdirs soxr
# (log-mel's filterbank comes from librosa while the step is traced; 2026-11-27 the image had
# numba, scipy, scikit-learn, joblib, lazy_loader and msgpack, not librosa and the rest)
# and call the device tool's run with carry [".whl"] and command "bash bench/gpu_7b_step.sh ...".
# GPU7B_EXTRA adds bench arguments to every part (e.g. "--llm_layers 1 --batch_size 1 --seconds 2
# --steps 2" tries the script itself on a CPU). GPU7B_DEADLINE=S ends every part within S seconds
# of the start (set it a minute under the device command's timeout_s). The profile part also
# leaves its trace and the step's HLO in $OUT (profile.*.gz), to read the table again elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_7b_step}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_7b_step: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import ml_collections, jiwer, flax, optax, orbax.checkpoint, sentencepiece, librosa.filters" 2>"$OUT/imports.log" || {
  cat "$OUT/imports.log" >&2
  echo "gpu_7b_step: a package is missing: download the wheels named at the top of bench/gpu_7b_step.sh into .whl and carry it" >&2
  exit 1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"

CONFIG=configs/llama2_7b_chat.py:8xh100
read -r -a EXTRA <<< "${GPU7B_EXTRA:-}"
# Later parts reuse the GEMM/fusion autotuning of earlier ones (the same kernels, found faster),
# if this XLA knows the flag (an unknown XLA flag aborts every run, so it is tried first).
cache=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/gpu_7b_step_autotune
if XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$cache" python3 -c "import jax; jax.devices()" > /dev/null 2>&1; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$cache"
else
  echo "gpu_7b_step: this XLA does not take $cache; every part autotunes afresh"
fi
# GPU7B_DEADLINE: seconds from here by which every part must end (the device tool's command
# limit, less the copying back); each part gets at most 400 s and no more than what is left.
DEADLINE=${GPU7B_DEADLINE:-0}
status=0
for part in "${@:-baseline profile}"; do
  for p in $part; do  # "${@:-a b}" gives one word "a b" when no PART is named
    case "$p" in
      baseline)   args=() ;;
      profile)    args=(--profile /tmp/gpu_7b_step_profile --steps 3) ;;
      remat_none) args=(--set align.llm_remat_policy=none) ;;
      cudnn)      args=(--set llm.attention_impl=cudnn) ;;
      attn_jax)   args=(--set llm.attention_impl=jax_xla) ;;
      batch16)    args=(--batch_size 16) ;;
      batch8)     args=(--batch_size 8) ;;
      unrolled)   args=(--set plan.encoder.scan_layers=false) ;;
      llm_unrolled) args=(--set llm.scan_layers=false) ;;
      dsfusion|lhs|dbuffer) args=() ;;
      select_skip) args=(--set nonfinite_skip=select) ;;
      *) echo "gpu_7b_step: unknown part $p (baseline profile remat_none cudnn attn_jax batch16 batch8 unrolled llm_unrolled dsfusion lhs dbuffer select_skip)" >&2
         exit 2 ;;
    esac
    flag=""
    [ "$p" = profile ] && flag=--xla_gpu_enable_command_buffer=
    [ "$p" = dsfusion ] && flag=--xla_gpu_enable_dynamic_slice_fusion=true
    [ "$p" = lhs ] && flag=--xla_gpu_enable_latency_hiding_scheduler=true
    [ "$p" = dbuffer ] && flag=--xla_gpu_enable_while_loop_double_buffering=true
    env=()
    [ -n "$flag" ] && env=(XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$flag")
    echo "== $p: ${env[*]} python3 bench/align_step.py --config $CONFIG ${args[*]} ${EXTRA[*]}" | tee "$OUT/$p.log"
    limit=400
    if [ "$DEADLINE" -gt 0 ]; then
      left=$((DEADLINE - SECONDS))
      [ "$left" -lt "$limit" ] && limit=$left
      if [ "$limit" -lt 60 ]; then
        echo "== $p: skipped, ${left} s left before GPU7B_DEADLINE" | tee -a "$OUT/$p.log"; status=1; continue
      fi
    fi
    start=$SECONDS
    env "${env[@]}" timeout "$limit" python3 bench/align_step.py --config "$CONFIG" "${args[@]}" "${EXTRA[@]}" 2>&1 \
      | tee -a "$OUT/$p.log"
    rc=${PIPESTATUS[0]}
    echo "== $p: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/$p.log"
    [ "$rc" = 0 ] || status=1
    if [ "$p" = profile ]; then  # the trace and the step's HLO, to read the table again elsewhere
      trace=$(ls -t $(find /tmp/gpu_7b_step_profile -name '*.trace.json.gz') 2>/dev/null | head -1)
      for f in "$trace:trace.json.gz" /tmp/gpu_7b_step_profile/step.hlo.txt.gz:step.hlo.txt.gz; do
        src=${f%:*}
        if [ -f "$src" ] && [ "$(stat -c %s "$src")" -lt 16000000 ]; then cp "$src" "$OUT/profile.${f##*:}"
        elif [ -f "$src" ]; then echo "== profile: $src is over 16 MB, not copied to \$OUT"; fi
      done
    fi
  done
done
exit $status
