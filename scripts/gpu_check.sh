#!/usr/bin/env bash
# The GPU check, in one run: one PASS/FAIL/SKIP line per check (with the reason), a JSON report, exit 1
# if any check failed.
#
#   bash scripts/gpu_check.sh                        # PYTHON=.venv-gpu-train/bin/python to choose the env
#   WHEELS=DIR bash scripts/gpu_check.sh             # a CUDA machine without a registry (docs/gpu.md):
#                                                    # DIR from `make gpu-wheelhouse`, copied over
#
# With WHEELS, the wheels in DIR/requirements.txt are installed into $OUT_DIR/site (no index, no
# dependency resolution, no build) and the checkout itself is put on PYTHONPATH (metastone without its
# dependencies); nothing is installed into the machine's Python. Runs on any machine: what needs CUDA,
# verl or vLLM reports SKIP with the reason (a CPU machine skips every CUDA check and exits 0).
# CHECK_DEVICE=cpu runs the checks written as tests (tests/gpu) on the CPU instead: how the suite keeps
# them working without a GPU (tests/test_gpu_wheelhouse.py).
# Results go to $OUT_DIR (default outputs/gpu_check): report.json, checks.jsonl, pytest logs.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-outputs/gpu_check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export CHECK_LOG="$OUT_DIR/checks.jsonl"
: > "$CHECK_LOG"
started=$(date +%s)

# record NAME STATUS REASON: one line here, one JSON line in checks.jsonl
record() {
  "$PY" -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "status": sys.argv[2], "reason": sys.argv[3]}))' \
    "$1" "$2" "$3" >> "$CHECK_LOG"
  echo "$2  $1${3:+: $3}"
}
has() { "$PY" -c "import $1" >/dev/null 2>&1; }

"$PY" -c "import torch" >/dev/null 2>&1 || { echo "FAIL  $PY cannot import torch: run the check with a Python that has it (PYTHON=...)"; exit 1; }
if [ -n "${WHEELS:-}" ]; then
  [ -f "$WHEELS/requirements.txt" ] || { echo "FAIL  $WHEELS/requirements.txt missing: WHEELS must be a folder made by make gpu-wheelhouse"; exit 1; }
  rm -rf "$OUT_DIR/site"
  # only what this Python lacks: a wheel put in front of an installed package could break what needs that one
  "$PY" - "$WHEELS/requirements.txt" > "$OUT_DIR/missing.txt" <<'EOF'
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    name = re.split(r"[=<>!~ ]", line.strip(), maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(line.strip())
EOF
  if [ ! -s "$OUT_DIR/missing.txt" ]; then
    record install PASS "$PY already has every package in $WHEELS/requirements.txt"
  elif out=$("$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --no-deps \
             --target "$OUT_DIR/site" -r "$OUT_DIR/missing.txt" 2>&1); then
    record install PASS "$(wc -l < "$OUT_DIR/missing.txt") of $(wc -l < "$WHEELS/requirements.txt") wheels from $WHEELS into $OUT_DIR/site (the rest were installed)"
  else
    record install FAIL "pip install --no-index from $WHEELS: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
  fi
  export PYTHONPATH="$OUT_DIR/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if out=$("$PY" scripts/gpu_wheelhouse.py --check-imports 2>&1); then
  record imports PASS "$(echo "$out" | tail -n 1)"
else
  record imports FAIL "$(echo "$out" | tr '\n' ' ' | cut -c1-500)"
fi
CUDA=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null)
echo "device: ${CUDA:-none (torch.cuda.is_available() is False)}; torch $("$PY" -c 'import torch; print(torch.__version__)'); python $("$PY" -c 'import platform; print(platform.python_version())')"

# 1. the checks written as tests (tests/gpu, marker gpu): each reports itself through tests/check_log.py
if has pytest; then
  "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider -p tests.check_log --check-device "${CHECK_DEVICE:-cuda}" tests/gpu \
    > "$OUT_DIR/tests_gpu.log" 2>&1
  rc=$?
  [ $rc -le 1 ] || record pytest FAIL "pytest exited $rc (log: $OUT_DIR/tests_gpu.log)"
  "$PY" - "$CHECK_LOG" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["check"].startswith("tests/"):
        print(f"{r['status']}  {r['check']}" + (f": {r['reason']}" if r["reason"] else ""))
EOF
else
  record tests/gpu FAIL "$PY cannot import pytest (give WHEELS=DIR from make gpu-wheelhouse, or install it)"
fi

# 2. SPRM overhead of a training step through verl's engine (single-process FSDP2 with the head, bf16)
if [ -z "$CUDA" ]; then record bench_train_step SKIP "no CUDA device"
elif ! has verl; then record bench_train_step SKIP "verl is not installed (make setup-gpu builds .venv-gpu-train)"
else
  packed=""
  has flash_attn && packed="--remove-padding --attn flash_attention_2"
  if "$PY" benchmarks/bench_train_step.py --hidden 1536 --layers 28 --heads 12 --kv-heads 2 --intermediate 8960 \
      --seq-len 8192 --prompt-len 1024 --batch 1 --dtype bf16 --checkpointing $packed \
      --json "$OUT_DIR/bench_train_step.json" > "$OUT_DIR/bench_train_step.log" 2>&1; then
    record bench_train_step PASS "$(tail -n 1 "$OUT_DIR/bench_train_step.log")"
  else
    record bench_train_step FAIL "see $OUT_DIR/bench_train_step.log"
  fi
fi

# 3. vLLM-vs-HF step-score parity (the plugin on CUDA)
if [ -z "$CUDA" ]; then record vllm_parity SKIP "no CUDA device"
elif ! has vllm; then record vllm_parity SKIP "vLLM is not installed (make setup-gpu builds .venv-gpu-serve)"
else
  if "$PY" -m pytest -q -rs -m serve -p no:cacheprovider tests/serve/test_vllm.py > "$OUT_DIR/vllm_parity.log" 2>&1; then
    record vllm_parity PASS "tests/serve/test_vllm.py"
  else
    record vllm_parity FAIL "see $OUT_DIR/vllm_parity.log"
  fi
fi

"$PY" - "$CHECK_LOG" "$OUT_DIR/report.json" "${CUDA:-}" "$(( $(date +%s) - started ))" <<'EOF'
import json, platform, sys, time
import torch
checks = [json.loads(line) for line in open(sys.argv[1])]
counts = {s: sum(c["status"] == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
report = {"date": time.strftime("%Y-%m-%d"), "device": sys.argv[3] or None, "torch": torch.__version__,
          "cuda": torch.version.cuda, "python": platform.python_version(), "seconds": int(sys.argv[4]),
          "counts": counts, "checks": checks}
open(sys.argv[2], "w").write(json.dumps(report, indent=1) + "\n")
print(f"gpu_check: {'FAILED' if counts['FAIL'] else 'ok'} ({counts['PASS']} pass, {counts['FAIL']} fail, "
      f"{counts['SKIP']} skip in {sys.argv[4]} s; report {sys.argv[2]})")
sys.exit(1 if counts["FAIL"] else 0)
EOF
