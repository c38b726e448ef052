#!/bin/bash
# Example: 2 nodes x 4 GPUs. Adapt partition/time to your cluster.
#SBATCH --job-name=lightning-fa
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1
srun .venv/bin/lightning-fa fit \
  --config experiments/base.yaml \
  --config experiments/backbone/hrnet.yaml \
  --config experiments/data/300vw.yaml \
  --config experiments/trainer/slurm.yaml "$@"
