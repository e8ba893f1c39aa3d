#!/usr/bin/env bash
# The Llama-2-7B align step on one GPU (ours; there is no peer at this size): ms/step and MFU
# against the bf16 matmul peak measured in the same run, at the config's per-device batch and
# at larger ones.
#
#   bash bench/gpu_7b_step.sh [BATCH ...]      # default: 4 16 (the config's batch, then 16)
#
# Each batch size runs `python3 bench/align_step.py --config configs/llama2_7b_chat.py:8xh100
# --batch_size B` under its own time limit (GPU7B_LIMIT seconds, default 400; a compile takes
# 1-2.5 min on an H100); the logs go to $OUT/batch_B.log. GPU7B_EXTRA adds bench arguments to
# every run (e.g. "--llm_layers 1 --seconds 2 --pairs 2" tries the script on a CPU).
#
# A GPU image without this project's lighter dependencies can take them as wheels: download
# them here into .whl (pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 -d .whl ml_collections jiwer rapidfuzz librosa audioread
# decorator soundfile cffi pycparser pooch platformdirs soxr) and carry .whl with the tree;
# this script installs them into /tmp/site first.
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
python3 -c "import ml_collections, jiwer, flax, optax, orbax.checkpoint, sentencepiece, librosa.filters" || {
  echo "gpu_7b_step: a package is missing: see the wheels named at the top of this script" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
read -r -a EXTRA <<< "${GPU7B_EXTRA:-}"
status=0
for batch in "${@:-4 16}"; do
  for b in $batch; do
    echo "== batch $b" | tee "$OUT/batch_$b.log"
    timeout "${GPU7B_LIMIT:-400}" python3 bench/align_step.py --config configs/llama2_7b_chat.py:8xh100 \
      --batch_size "$b" "${EXTRA[@]}" 2>&1 | tee -a "$OUT/batch_$b.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
done
exit $status
