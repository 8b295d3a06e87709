#!/usr/bin/env bash
# GPU readiness in one short script (under 10 minutes on one H100/H200-class GPU):
#   1. the scorer on CUDA in fp32 and bf16 autocast vs a CPU float64 reference (benchmarks.amp_check);
#   2. the throughput grid on CUDA with bf16 autocast: cpu-small and gpt2 shapes, seq 128-512,
#      plain vs every estimator set vs torch.func per-example gradients, peak CUDA memory
#      (benchmarks.throughput --gpu).
# Needs only python3 with torch + transformers (no polars/prefect/faiss), run from anywhere:
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/*_gpu* / amp_check_cuda.*
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also copies the results there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TRANSFORMERS_VERBOSITY=error
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 3)" \
  || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
"$PY" -m benchmarks.amp_check --device cuda
echo "amp_check: $(( $(date +%s) - start )) s"
"$PY" -m benchmarks.throughput --gpu
echo "gpu_check: done in $(( $(date +%s) - start )) s"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp benchmarks/results/amp_check_cuda.* benchmarks/results/throughput_gpu.* "$OUT"/
fi
