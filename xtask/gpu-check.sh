#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the repository root with `target/gpu-check`
# carried (built here by `cargo xtask gpu-check`). Every golden parity case on Burn's CUDA
# backend (float32, the reference tolerances), then the CUDA benchmarks beside PyTorch; each
# part has its own time limit so the whole stays well inside 10 minutes. Writes the report to
# $OUT/report.md (the device tool's output folder), or target/gpu-check/out.
set -u
cd "$(dirname "$0")/.."
B=target/gpu-check/xtask
OUT="${OUT:-target/gpu-check/out}"
mkdir -p "$OUT"
export AUTOMODEL_ROOT="$PWD" RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1
if ! python3 -c "import peft" 2>/dev/null && [ -d target/gpu-check/py ]; then
  export PYTHONPATH="$PWD/target/gpu-check/py${PYTHONPATH:+:$PYTHONPATH}"
fi
report="$OUT/report.md"
{
  echo "# GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1
  python3 -c "import peft; print('peft', peft.__version__)" 2>&1
  echo '```'
} > "$report"

part() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  {
    echo
    echo "## $name (exit $rc, $((SECONDS - t0)) s)"
    echo '```'
    grep -E "passed|failed|FAIL|error" "$OUT/$name.txt" | tail -n 20
    echo '```'
  } >> "$report"
}

part parity 180 "$B" parity reference/golden --device cuda
part parity-peft 60 "$B" parity reference/golden-peft --device cuda
part bench 300 "$B" bench --device cuda --quick --baseline --steps 3 --warmup 1 --json "$OUT/bench.json"
{
  echo
  echo "## benchmarks"
  grep -E '^\|' "$OUT/bench.txt"
} >> "$report"
cat "$report"
