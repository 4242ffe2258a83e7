#!/bin/bash
# Sharded feature extraction on Slurm: one task per GPU, each writes its own shard,
# rank 0 merges after a gloo barrier. Re-submitting the same script after a crash,
# pre-emption or time-out resumes every shard (finished sequences are skipped).
#SBATCH --job-name=poselift-extract
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

OUT=/shared/caches/h36m_resnet50_features.h5      # shards: $OUT.shard-<rank>-of-<world>.h5
MANIFEST=/shared/data/h36m/manifest.json
WEIGHTS=/shared/weights/resnet50.pth

# Rendezvous for the end-of-run barrier (torchrun sets these itself; srun does not).
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK

# --kill-on-bad-exit: if one task dies, end the step instead of letting rank 0 wait at the
# barrier; the next submission resumes. Rank/world come from SLURM_PROCID/SLURM_NTASKS.
srun --kill-on-bad-exit=1 poselift-extract-dist "$OUT" \
    --manifest "$MANIFEST" --weights "$WEIGHTS" --backbone resnet50 \
    --batch-size 128 --workers 6 --compile

# Without the barrier (e.g. no network between tasks), use --merge none above and then:
#   poselift-cache merge "$OUT" "$OUT".shard-*-of-"$SLURM_NTASKS".h5 --remove-inputs
poselift-cache verify --no-digests "$OUT"
