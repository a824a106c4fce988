#!/usr/bin/env bash
# Join THIS node to a Ray training cluster as a worker.
#
#   HEAD_ADDRESS=10.0.0.1 NET_IF=eth0 bash verl/examples/ray/run_worker.sh
#
# Environment:
#   HEAD_ADDRESS    head node address (required)
#   RAY_PORT        head GCS port                                  (default 6379)
#   NET_IF, NODE_IP, GPUS_PER_NODE, CPUS_PER_NODE, RAY_START_ARGS, RAY_BLOCK: as in run_head.sh
#   The head's token (RAY_AUTH_TOKEN, or the file at RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token).
set -euo pipefail
# Network: NET_IF (default: the default-route interface) carries NCCL/Gloo; NODE_IP is its IPv4.
if [[ -z "${NET_IF:-}" ]] && command -v ip >/dev/null 2>&1; then
  NET_IF="$(ip route show default 2>/dev/null | awk '/default/ {print $5; exit}')"
fi
if [[ -z "${NODE_IP:-}" && -n "${NET_IF:-}" ]] && command -v ip >/dev/null 2>&1; then
  NODE_IP="$(ip -4 addr show "${NET_IF}" | awk '/inet / {sub(/\/.*/, "", $2); print $2; exit}')"
fi
NODE_IP="${NODE_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
: "${NODE_IP:?cannot determine the IP of this node: set NODE_IP or NET_IF}"
if [[ -n "${NET_IF:-}" ]]; then
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-${NET_IF}}"
  export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-${NET_IF}}"
fi

: "${HEAD_ADDRESS:?set HEAD_ADDRESS to the Ray head node address}"
RAY_PORT="${RAY_PORT:-6379}"
extra=()
[[ -n "${GPUS_PER_NODE:-}" ]] && extra+=("--num-gpus=${GPUS_PER_NODE}")
[[ -n "${CPUS_PER_NODE:-}" ]] && extra+=("--num-cpus=${CPUS_PER_NODE}")
[[ -n "${RAY_START_ARGS:-}" ]] && read -r -a more <<< "${RAY_START_ARGS}" && extra+=("${more[@]}")
[[ "${RAY_BLOCK:-0}" == "1" ]] && extra+=("--block")

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
token_file="${RAY_AUTH_TOKEN_PATH:-${HOME}/.ray/auth_token}"
if [[ "${RAY_AUTH_MODE}" == "token" && -z "${RAY_AUTH_TOKEN:-}" && ! -s "${token_file}" ]]; then
  echo "no cluster token in ${token_file}: copy the head's (run_head.sh printed where it is) to that path, or set RAY_AUTH_TOKEN" >&2
  exit 2
fi

ray start --address="${HEAD_ADDRESS}:${RAY_PORT}" --node-ip-address="${NODE_IP}" "${extra[@]}"
