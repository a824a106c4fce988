#!/usr/bin/env bash
# Start the Ray HEAD node of a training cluster. Nothing secret is stored here: addresses, ports and
# the network interface come from the environment.
#
#   NET_IF=eth0 GPUS_PER_NODE=8 bash verl/examples/ray/run_head.sh
#
# Environment:
#   NET_IF          network interface for NCCL/Gloo traffic        (default: the default-route interface)
#   NODE_IP         this node's address                           (default: NET_IF's IPv4 address)
#   RAY_PORT        GCS port                                       (default 6379)
#   DASHBOARD_PORT  Ray dashboard port                             (default 8265)
#   DASHBOARD_HOST  address the dashboard binds                    (default 127.0.0.1: Ray's dashboard
#                   accepts jobs, i.e. runs code; reach it over ssh -L, or set 0.0.0.0 behind a firewall)
#   GPUS_PER_NODE   GPUs Ray may schedule here                     (default: all visible)
#   CPUS_PER_NODE   CPUs Ray may schedule here                     (default: all)
#   RAY_TEMP_DIR    Ray's session folder                           (default /tmp/ray)
#   RAY_START_ARGS  further `ray start` flags, e.g. "--include-dashboard=false"
#   RAY_BLOCK=1     keep the process in the foreground
#
# Token authentication: the cluster is started with a token (RAY_AUTH_TOKEN, or the file at
# RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token; one is generated there if none exists). Every worker
# node and the training command need the same token: copy the file to the same path on each node.
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

RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"
extra=()
[[ -n "${GPUS_PER_NODE:-}" ]] && extra+=("--num-gpus=${GPUS_PER_NODE}")
[[ -n "${CPUS_PER_NODE:-}" ]] && extra+=("--num-cpus=${CPUS_PER_NODE}")
[[ -n "${RAY_TEMP_DIR:-}" ]] && extra+=("--temp-dir=${RAY_TEMP_DIR}")
[[ -n "${RAY_START_ARGS:-}" ]] && read -r -a more <<< "${RAY_START_ARGS}" && extra+=("${more[@]}")
[[ "${RAY_BLOCK:-0}" == "1" ]] && extra+=("--block")

# Token authentication (see above): generate a token where Ray looks for it when there is none.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "${RAY_AUTH_MODE}" == "token" && -z "${RAY_AUTH_TOKEN:-}" ]]; then
  token_file="${RAY_AUTH_TOKEN_PATH:-${HOME}/.ray/auth_token}"
  if [[ ! -s "${token_file}" ]]; then
    mkdir -p "$(dirname "${token_file}")"
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "${token_file}")
    echo "generated a cluster token in ${token_file}: copy it to the same path on every worker node"
  fi
fi

ray start --head --node-ip-address="${NODE_IP}" --port="${RAY_PORT}" \
  --dashboard-host="${DASHBOARD_HOST}" --dashboard-port="${DASHBOARD_PORT}" "${extra[@]}"
echo "head started: workers join with HEAD_ADDRESS=${NODE_IP} RAY_PORT=${RAY_PORT} bash verl/examples/ray/run_worker.sh"
