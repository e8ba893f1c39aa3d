#!/usr/bin/env bash
# Cloud TPU pod: create a TPU VM slice, install this repo on every worker, run the same
# trainer command on every worker with the work dir on GCS. `python -m audiochat_jax.distributed
# --auto` calls jax.distributed.initialize(), which finds its peers in the TPU metadata.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --accelerator v5p-128 --workdir gs://BUCKET/align_70b \
#       [--version v2-alpha-tpuv5] [--repo gs://BUCKET/audiochat_jax.tar.gz] [--spot] [--dry-run] \
#       [--skip-create] [--skip-install] -- --config configs/llama2_70b_chat.py:v5p-128 --config.align.llm_dir=...
#
# Everything after `--` goes to `python -m audiochat_jax.train` unchanged. --dry-run prints
# the commands instead of running them. Rerunning the same command resumes from the
# workdir's latest checkpoint (the trainer's resume order); --skip-create/--skip-install
# reuse a slice that already exists.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

TPU="" ZONE="" ACCEL="" WORKDIR="" VERSION="" REPO="" SPOT="" DRY=0 CREATE=1 INSTALL=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --repo) REPO="$2"; shift 2 ;;
    --spot) SPOT="--spot"; shift ;;
    --dry-run) DRY=1; shift ;;
    --skip-create) CREATE=0; shift ;;
    --skip-install) INSTALL=0; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (trainer flags go after --)" >&2; usage 2 ;;
  esac
done
TRAIN_ARGS=("$@")
for v in TPU ZONE ACCEL WORKDIR; do
  [[ -n "${!v}" ]] || { echo "tpu_pod.sh: --$(echo "$v" | tr 'A-Z' 'a-z' | sed 's/accel/accelerator/') is required" >&2; exit 2; }
done
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || { echo "tpu_pod.sh: give the trainer flags after --, e.g. -- --config configs/llama2_7b_chat.py:v4-32" >&2; exit 2; }
if [[ -z "$VERSION" ]]; then  # the TPU VM base image for each generation
  case "$ACCEL" in
    v4-*) VERSION="tpu-ubuntu2204-base" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v5litepod-*) VERSION="v2-alpha-tpuv5-lite" ;;
    *) echo "tpu_pod.sh: no default --version for --accelerator $ACCEL; pass --version" >&2; exit 2 ;;
  esac
fi
[[ -n "$REPO" ]] || REPO="${WORKDIR%/}/code/audiochat_jax.tar.gz"

run() {  # print, and run unless --dry-run
  printf '%q ' "$@"; printf '\n'
  [[ $DRY -eq 1 ]] || "$@"
}

SSH=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all)

# 1. The slice.
if [[ $CREATE -eq 1 ]]; then
  run gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --accelerator-type "$ACCEL" \
      --version "$VERSION" $SPOT
fi

# 2. This checkout -> GCS -> every worker, installed with the TPU extra.
if [[ $INSTALL -eq 1 ]]; then
  HERE="$(cd "$(dirname "$0")/.." && pwd)"
  run tar -C "$HERE" --exclude=.git --exclude=work -czf /tmp/audiochat_jax.tar.gz .
  run gcloud storage cp /tmp/audiochat_jax.tar.gz "$REPO"
  run "${SSH[@]}" --command "mkdir -p ~/audiochat_jax && gcloud storage cp $REPO - | tar -C ~/audiochat_jax -xzf - && python3 -m venv ~/venv && ~/venv/bin/pip install -q -e \"\$HOME/audiochat_jax[tpu]\""
fi

# 3. The same command on every worker; process 0 prints the progress.
CMD="cd ~/audiochat_jax && ~/venv/bin/python -m audiochat_jax.distributed --auto audiochat_jax.train --workdir $WORKDIR"
for a in "${TRAIN_ARGS[@]}"; do CMD+=" $(printf '%q' "$a")"; done
run "${SSH[@]}" --command "$CMD"
