#!/usr/bin/env bash
# GRPO + SPRM training on one node (MetaStone-S1 recipe on verl 0.9.1).
#
#   PRESET=s1_1p5b TRAIN_FILES=data/metastone/train.parquet VAL_FILES=data/metastone/val.parquet \
#     bash scripts/run_single_node.sh [--dry-run] [hydra overrides ...]
#
# Environment (all optional except the data files when the preset's defaults do not exist):
#   PRESET       tiny | cpu_tiny | s1_1p5b | s1_7b | s1_32b       (default s1_1p5b)
#   MODEL        policy checkpoint: HF folder or Hub id           (default: the preset's)
#   TRAIN_FILES  training parquet from `python -m metastone.data.prepare`
#   VAL_FILES    validation parquet
#   OUTPUT_DIR   checkpoint folder                                (default checkpoints/metastone/$EXPERIMENT)
#   EXPERIMENT   run name                                         (default: the preset's)
#   N_GPUS       GPUs on this node (training processes on CPU)    (default: all visible, from nvidia-smi; 1 without it)
#   PYTHON       interpreter with metastone[train] installed      (default python)
# Everything after the options is passed to hydra, e.g. trainer.total_training_steps=10.
set -euo pipefail

PRESET="${PRESET:-s1_1p5b}"
PYTHON="${PYTHON:-python}"
if [[ -z "${N_GPUS:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    N_GPUS="$(nvidia-smi --list-gpus | wc -l)"
  else
    N_GPUS=1  # no NVIDIA GPU: a CPU run (PRESET=cpu_tiny) trains in one process
  fi
fi

args=("preset=${PRESET}" "trainer.nnodes=1" "trainer.n_gpus_per_node=${N_GPUS}")
[[ -n "${MODEL:-}" ]] && args+=("actor_rollout_ref.model.path=${MODEL}")
[[ -n "${TRAIN_FILES:-}" ]] && args+=("data.train_files=${TRAIN_FILES}")
[[ -n "${VAL_FILES:-}" ]] && args+=("data.val_files=${VAL_FILES}")
[[ -n "${EXPERIMENT:-}" ]] && args+=("trainer.experiment_name=${EXPERIMENT}")
[[ -n "${OUTPUT_DIR:-}" ]] && args+=("trainer.default_local_dir=${OUTPUT_DIR}")

# Tokenizer threads fight with the data loader; Ray needs no dashboard on a single node.
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"
export RAY_DISABLE_DASHBOARD="${RAY_DISABLE_DASHBOARD:-1}"

exec "${PYTHON}" -m metastone.train "${args[@]}" "$@"
