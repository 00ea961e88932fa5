#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the repository root with `target/gpu-check`
# carried (built here by `cargo xtask gpu-check`). It needs no further step there:
#   1. finds NVRTC (CubeCL compiles its kernels at run time with it) or says where it looked;
#   2. checks that torch, transformers and peft import (else it stops: no empty columns);
#   3. every golden parity case on Burn's CUDA backend (float32 with every gradient, bfloat16),
#      the LoRA cases, a float16 forward, and the golden image/audio processors;
#   4. 10 steps of recipes/gemma3n-tiny-multimodal.yaml on the GPU, when the bundle holds the
#      CLI (the xtask binary alone is 41 MiB of the 64 MiB the device tool carries, so the CLI
#      does not fit beside it yet; the report says so);
#   5. the CUDA benchmarks (E2B and E4B LoRA steps with MFU, the 270M) beside PyTorch.
# Each part has its own time limit so the whole stays inside 10 minutes. Writes the report to
# $OUT/report.md (the device tool's output folder), or target/gpu-check/out.
set -u
cd "$(dirname "$0")/.."
B=target/gpu-check/xtask
CLI=target/gpu-check/automodel-cli
OUT="${OUT:-target/gpu-check/out}"
mkdir -p "$OUT"
export AUTOMODEL_ROOT="$PWD" RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1
if ! python3 -c "import peft, timm" 2>/dev/null && [ -d target/gpu-check/py ]; then
  export PYTHONPATH="$PWD/target/gpu-check/py${PYTHONPATH:+:$PYTHONPATH}"
fi
report="$OUT/report.md"

# 1. NVRTC: the CUDA toolkit's, the system's, or the one pip's torch ships (nvidia-cuda-nvrtc)
looked=()
nvrtc=""
for d in ${CUDA_PATH:+$CUDA_PATH/lib64} ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 \
  /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 \
  $(python3 -c "import site; print(' '.join(p + '/nvidia/cuda_nvrtc/lib' for p in site.getsitepackages()))" 2>/dev/null); do
  looked+=("$d")
  f=$(ls "$d"/libnvrtc.so* 2>/dev/null | head -n 1)
  if [ -n "$f" ]; then nvrtc=$f; break; fi
done
if [ -z "$nvrtc" ]; then
  echo "error: NVRTC (libnvrtc.so) not found; looked in: ${looked[*]}" | tee "$report" >&2
  echo "install the CUDA toolkit's NVRTC (e.g. pip install nvidia-cuda-nvrtc-cu12) or set CUDA_PATH" | tee -a "$report" >&2
  exit 1
fi
d=$(dirname "$nvrtc")
[ -e "$d/libnvrtc.so" ] || { mkdir -p "$OUT/lib" && ln -sf "$nvrtc" "$OUT/lib/libnvrtc.so" && d="$d:$OUT/lib"; }
export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
  echo "# GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  echo "NVRTC: $nvrtc"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)"
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1
  echo '```'
} > "$report"

# 2. the baseline's packages, or stop here
if ! python3 -c "import torch, transformers, peft, timm, PIL" 2>>"$report"; then
  echo "error: torch, transformers, peft, timm and Pillow must import for the PyTorch baseline (see $report)" >&2
  cat "$report"
  exit 1
fi

part() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  {
    echo
    echo "## $name (exit $rc, $((SECONDS - t0)) s)"
    echo '```'
    grep -E "passed|failed|FAIL|error|skipped|loss" "$OUT/$name.txt" | tail -n 20
    echo '```'
  } >> "$report"
}

part parity 150 "$B" parity reference/golden --device cuda
part parity-peft 60 "$B" parity reference/golden-peft --device cuda
part f16 30 "$B" f16-smoke --device cuda
if [ ! -x "$CLI" ]; then
  printf '\n## finetune\nnot run: %s is not in the bundle (see the header of this script)\n' "$CLI" >> "$report"
else
part finetune 90 "$CLI" finetune --config recipes/gemma3n-tiny-multimodal.yaml --device cuda \
  --set step_scheduler.max_steps=10 --set evaluation.before_training=false \
  --set step_scheduler.val_every_steps=1000 --set checkpoint.enabled=false \
  --output-dir "$OUT/finetune"
[ -f "$OUT/finetune/training.jsonl" ] && { echo '```'; cat "$OUT/finetune/training.jsonl"; echo '```'; } >> "$report"
fi
part bench 240 "$B" bench --device cuda --baseline --rounds 1 --steps 3 --warmup 1 --only E2B --only E4B --json "$OUT/bench.json"
{
  echo
  echo "## benchmarks"
  grep -E '^\|' "$OUT/bench.txt"
} >> "$report"
cat "$report"
