#!/usr/bin/env bash
# Multi-node GPU (SLURM): one process per node owning its 8 GPUs; process 0's node is the
# jax.distributed coordinator. Submits itself with sbatch, then (inside the allocation)
# starts one task per node with srun, each exporting
#   JAX_COORDINATOR_ADDRESS=<first node>:<port>  JAX_NUM_PROCESSES=$SLURM_NTASKS  JAX_PROCESS_ID=$SLURM_PROCID
# which `python -m audiochat_jax.distributed` passes to jax.distributed.initialize.
#
#   launch/gpu_slurm.sh --nodes 2 --gpus_per_node 8 --workdir /shared/align_70b [--partition P] \
#       [--time 24:00:00] [--port 12345] [--venv /shared/venv] [--dry-run] \
#       -- --config configs/llama2_70b_chat.py:2x8xh100 --config.align.llm_dir=...
#
# Everything after `--` goes to `python -m audiochat_jax.train` unchanged. The work dir
# and the repo must be on a filesystem every node sees. --dry-run prints the sbatch command
# and the per-node command (with SLURM's variables left as $VARS) instead of running them.
# SLURM's --signal=TERM@300 gives the trainer 5 minutes to save before the time limit;
# resubmitting the same command resumes from the latest checkpoint.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

NODES="" GPUS=8 WORKDIR="" PARTITION="" TIME="24:00:00" PORT=12345 DRY=0 INNER=0
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus_per_node) GPUS="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --inner) INNER=1; shift ;;   # set by the script itself inside the allocation
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "gpu_slurm.sh: unknown option $1 (trainer flags go after --)" >&2; usage 2 ;;
  esac
done
TRAIN_ARGS=("$@")
[[ -n "$NODES" ]] || { echo "gpu_slurm.sh: --nodes is required" >&2; exit 2; }
[[ -n "$WORKDIR" ]] || { echo "gpu_slurm.sh: --workdir is required" >&2; exit 2; }
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || { echo "gpu_slurm.sh: give the trainer flags after --, e.g. -- --config configs/llama2_7b_chat.py:8xh100" >&2; exit 2; }
REPO="$(cd "$(dirname "$0")/.." && pwd)"

QUOTED=""
for a in "${TRAIN_ARGS[@]}"; do QUOTED+=" $(printf '%q' "$a")"; done
# Per node: the coordinator is the allocation's first node (process 0).
NODE_CMD="export JAX_COORDINATOR_ADDRESS=\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n1):$PORT JAX_NUM_PROCESSES=\$SLURM_NTASKS JAX_PROCESS_ID=\$SLURM_PROCID; cd $(printf '%q' "$REPO") && $(printf '%q' "$VENV")/bin/python -m audiochat_jax.distributed audiochat_jax.train --workdir $(printf '%q' "$WORKDIR")$QUOTED"

if [[ $INNER -eq 1 ]]; then
  exec srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 bash -c "$NODE_CMD"
fi

SBATCH=(sbatch --job-name=audiochat_jax --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS"
        --exclusive --time="$TIME" --signal=TERM@300 --output="slurm-%j.out")
[[ -z "$PARTITION" ]] || SBATCH+=(--partition="$PARTITION")
SELF=("$0" --inner --nodes "$NODES" --gpus_per_node "$GPUS" --workdir "$WORKDIR" --port "$PORT" --venv "$VENV" -- "${TRAIN_ARGS[@]}")
if [[ $DRY -eq 1 ]]; then
  printf '%q ' "${SBATCH[@]}" "${SELF[@]}"; printf '\n'
  printf 'srun --ntasks=%s --ntasks-per-node=1 bash -c %q\n' "$NODES" "$NODE_CMD"
  exit 0
fi
"${SBATCH[@]}" "${SELF[@]}"
