#!/bin/bash
# clapkit on machines without SLURM (Kubernetes, bare metal, cloud VMs, a laptop): run this same
# command on every node; torchrun starts NPROC processes per node and Lightning picks up the
# TorchElastic environment (RANK, WORLD_SIZE, MASTER_ADDR from torchrun).
#
#   NPROC=2 scripts/torchrun.sh configs/quickstart/clap.yaml              # 2 CPU processes (gloo)
#   scripts/torchrun.sh configs/clap/htsat_roberta.yaml                   # every GPU here (NCCL)
#   NODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh configs/clap/htsat_roberta.yaml [extra args]
#   NODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh configs/clap/htsat_roberta.yaml [extra args]
#
# The accelerator comes from the machine: GPUs when nvidia-smi lists any (one process per GPU
# unless NPROC says otherwise), else the CPU (NPROC processes, default 1); ACCELERATOR=cpu|gpu
# overrides. GPUS is the old name of NPROC and still works. The DDP settings are those of
# configs/overlays/ddp.yaml (static graph: the encoders' AudioSet heads never get gradients).
# RUN_DIR (default runs/<config name>) must be the same shared path on every node; a rerun of
# the same command resumes from RUN_DIR/checkpoints/last.ckpt. Set DRY_RUN=1 to print the command.
set -euo pipefail

CONFIG="${1:?usage: scripts/torchrun.sh CONFIG [clapkit fit args...]}"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES="${NODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
CKPT_EVERY="${CKPT_EVERY:-1000}"
VENV="${VENV:-.venv}"
RUN_DIR="${RUN_DIR:-runs/$(basename "${CONFIG%.*}")}"
if [[ -f configs/overlays/ddp.yaml ]]; then DDP_OVERLAY="${DDP_OVERLAY:-configs/overlays/ddp.yaml}"; fi
DDP_OVERLAY="${DDP_OVERLAY:-$HERE/../configs/overlays/ddp.yaml}"

GPU_COUNT="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
if [[ -z "${ACCELERATOR:-}" ]]; then
  if [[ "$GPU_COUNT" -gt 0 ]]; then ACCELERATOR=gpu; else ACCELERATOR=cpu; fi
fi
case "$ACCELERATOR" in
  gpu) DEFAULT_NPROC="$GPU_COUNT" ;;
  cpu) DEFAULT_NPROC=1 ;;
  *) echo "scripts/torchrun.sh: ACCELERATOR must be cpu or gpu, got '$ACCELERATOR'" >&2; exit 2 ;;
esac
NPROC="${NPROC:-${GPUS:-$DEFAULT_NPROC}}"
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "scripts/torchrun.sh: no GPU found for ACCELERATOR=gpu; set NPROC, or ACCELERATOR=cpu" >&2
  exit 2
fi
if [[ "$ACCELERATOR" == cpu ]]; then
  # CPU processes share the cores: give each its part instead of one thread per core each.
  THREADS=$(( $(nproc) / NPROC ))
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}"
else
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

CMD=(
  "$VENV/bin/torchrun"
  --nnodes="$NODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC"
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"
  -m clapkit fit
  --config "$CONFIG" --config "$DDP_OVERLAY"
  --trainer.accelerator="$ACCELERATOR" --trainer.devices="$NPROC" --trainer.num_nodes="$NODES"
  --trainer.default_root_dir="$RUN_DIR"
  --trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint
  --trainer.callbacks.dirpath="$RUN_DIR/checkpoints"
  --trainer.callbacks.save_last=true
  --trainer.callbacks.every_n_train_steps="$CKPT_EVERY"
  --ckpt_path=last --weights_only=true
  "$@"
)
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
exec "${CMD[@]}"
