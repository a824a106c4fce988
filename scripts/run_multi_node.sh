#!/usr/bin/env bash
# GRPO + SPRM training on a Ray cluster of several nodes. Run on the HEAD node after
#   bash verl/examples/ray/run_head.sh            (on the head)
#   bash verl/examples/ray/run_worker.sh          (on every other node, or run_worker_n.sh from the head)
#
#   NNODES=4 PRESET=s1_32b MODEL=/models/QwQ-32B TRAIN_FILES=... VAL_FILES=... \
#     bash scripts/run_multi_node.sh [--dry-run] [hydra overrides ...]
#
# Environment:
#   NNODES          nodes in the cluster (required)
#   GPUS_PER_NODE   GPUs per node                                   (default 8)
#   RAY_ADDRESS     cluster to join                                 (default auto: the local head)
#   RAY_AUTH_TOKEN_PATH  the cluster's token file (default ~/.ray/auth_token; see run_head.sh)
#   PRESET, MODEL, TRAIN_FILES, VAL_FILES, OUTPUT_DIR, EXPERIMENT, PYTHON: as in run_single_node.sh
# Paths (model, data, OUTPUT_DIR) must be visible at the same place on every node (shared storage).
# A node lost mid-run stops the run with a message naming it; rerun the same command once it is back
# to resume from the last complete checkpoint (docs/train.md "Multi-node").
set -euo pipefail

: "${NNODES:?set NNODES to the number of nodes in the Ray cluster}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
PRESET="${PRESET:-s1_32b}"
PYTHON="${PYTHON:-python}"
export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
# the cluster's token (run_head.sh): RAY_AUTH_TOKEN or the file at RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token)
if [[ -z "${RAY_AUTH_MODE:-}" && ( -n "${RAY_AUTH_TOKEN:-}" || -s "${RAY_AUTH_TOKEN_PATH:-${HOME}/.ray/auth_token}" ) ]]; then
  export RAY_AUTH_MODE=token
fi

args=("preset=${PRESET}" "trainer.nnodes=${NNODES}" "trainer.n_gpus_per_node=${GPUS_PER_NODE}")
[[ -n "${MODEL:-}" ]] && args+=("actor_rollout_ref.model.path=${MODEL}")
[[ -n "${TRAIN_FILES:-}" ]] && args+=("data.train_files=${TRAIN_FILES}")
[[ -n "${VAL_FILES:-}" ]] && args+=("data.val_files=${VAL_FILES}")
[[ -n "${EXPERIMENT:-}" ]] && args+=("trainer.experiment_name=${EXPERIMENT}")
[[ -n "${OUTPUT_DIR:-}" ]] && args+=("trainer.default_local_dir=${OUTPUT_DIR}")

export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"

exec "${PYTHON}" -m metastone.train "${args[@]}" "$@"
