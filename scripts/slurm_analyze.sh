#!/usr/bin/env bash
# A Slurm job array for the paper's full run: each array task analyses every N-th block of the
# data (N = the array size) and writes a shard directory; a dependent job merges them.
#
#   sbatch --array=0-7 scripts/slurm_analyze.sh            # 8 shards
#   sbatch --dependency=afterok:<JOBID> --wrap \
#     "seedscope merge shards/shard-* --out bundle-gpt2-small"
#
# Every task must see the same models (`seedscope download stanford-gpt2-small` once into a
# shared HF_HOME), the same data file and the same kind of device (the shards' plans and, with
# --refine, their candidates must agree; the merge checks both). A task that is preempted
# resumes from its checkpoint when requeued with the same command.
#SBATCH --job-name=seedscope
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail
: "${DATA:=pile-test.jsonl.zst}"
: "${MODELS:=stanford-gpt2-small}"
export HF_HUB_OFFLINE=1
mkdir -p shards
exec seedscope analyze --models "$MODELS" --dataset "$DATA" --max-tokens 100000000 \
  --refine 2000000 --candidates 32 --shard slurm \
  --out "shards/shard-${SLURM_ARRAY_TASK_ID}"
