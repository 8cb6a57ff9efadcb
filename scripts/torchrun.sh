#!/bin/bash
# clapkit on clusters without SLURM (Kubernetes, bare metal, cloud VMs): run this same
# command on every node; torchrun starts one process per GPU and Lightning picks up the
# TorchElastic environment (RANK, WORLD_SIZE, MASTER_ADDR from torchrun).
#
#   NODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 scripts/torchrun.sh configs/clap/htsat_roberta.yaml [extra args]
#   NODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS=8 scripts/torchrun.sh configs/clap/htsat_roberta.yaml [extra args]
#
# RUN_DIR (default runs/<config name>) must be the same shared path on every node; a rerun of
# the same command resumes from RUN_DIR/checkpoints/last.ckpt. Set DRY_RUN=1 to print the command.
set -euo pipefail

CONFIG="${1:?usage: scripts/torchrun.sh CONFIG [clapkit fit args...]}"
shift
NODES="${NODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l || echo 1)}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
CKPT_EVERY="${CKPT_EVERY:-1000}"
VENV="${VENV:-.venv}"
RUN_DIR="${RUN_DIR:-runs/$(basename "${CONFIG%.*}")}"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

CMD=(
  "$VENV/bin/torchrun"
  --nnodes="$NODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS"
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"
  -m clapkit fit
  --config "$CONFIG"
  --trainer.accelerator=gpu --trainer.devices="$GPUS" --trainer.num_nodes="$NODES"
  --trainer.strategy=ddp
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
