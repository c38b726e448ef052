#!/bin/bash
# Example: 2 nodes x 4 GPUs. Adapt partition/time to your cluster.
#SBATCH --job-name=lightning-fa
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
# Preemption / time limit: SIGUSR1 to every task 90 s before the end; Lightning (slurm.yaml's
# SLURMEnvironment) saves a checkpoint and requeues the job, which --requeue allows.
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1
# A requeued job (SLURM_RESTART_COUNT > 0) resumes from what Lightning saved on SIGUSR1
# (hpc_ckpt_<n>.ckpt, newer than any epoch's checkpoint); a new submission from the run's
# last.ckpt, if there is one (otherwise it starts afresh). A job requeued without an hpc
# checkpoint (a node failure) stops on Lightning's "no HPC checkpoint" error: submit it again.
# A --ckpt_path in "$@" overrides both.
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]]; then resume=hpc; else resume=last; fi
srun .venv/bin/lightning-fa fit \
  --config experiments/base.yaml \
  --config experiments/backbone/hrnet.yaml \
  --config experiments/data/300vw.yaml \
  --config experiments/trainer/slurm.yaml \
  --ckpt_path "$resume" "$@"
