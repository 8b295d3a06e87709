#!/usr/bin/env bash
# GPU readiness in one short script (under 10 minutes on one H100/H200-class GPU):
#   1. the scorer on CUDA in fp32 and bf16 autocast vs a CPU float64 reference (benchmarks.amp_check);
#   2. the throughput grid on CUDA with bf16 autocast: cpu-small and gpt2 shapes, seq 128-512,
#      plain vs every estimator set vs torch.func per-example gradients, peak CUDA memory
#      (benchmarks.throughput --gpu), then the realistic-settings table on CUDA with bf16: gpt2 at
#      training batch 16/64, target 1/4/16 rows, exact vs low-rank/auto contraction (fidelity R),
#      adam/sgd, peak CUDA memory at gpt2 batch 64 target 4, a momentum_window=10 row
#      (benchmarks.throughput --realistic --gpu, added to throughput_gpu.*; SKIP_REALISTIC=1 skips);
#   3. FAISS spherical k-means on GPU 0 vs the CPU on the same embeddings: labels and objective
#      must agree within float tolerance (benchmarks.faiss_gpu_check, the `gpu` extra's faiss).
# Steps 1-2 need only python3 with torch + transformers (no polars/prefect); step 3 needs numpy and
# a faiss with GPU support: when the installed faiss has none, a faiss_gpu_cu12 wheel found in
# $FAISS_WHEELS (default .whl/; the machine may be offline) is installed first, and without one
# step 3 fails with a message (set SKIP_FAISS_GPU=1 to leave it out). Run from anywhere:
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
echo "throughput grid: $(( $(date +%s) - start )) s"
if [ "${SKIP_REALISTIC:-0}" != "1" ]; then
  "$PY" -m benchmarks.throughput --realistic --gpu
  echo "throughput realistic: $(( $(date +%s) - start )) s"
fi
faiss_gpu() { "$PY" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; }
if [ "${SKIP_FAISS_GPU:-0}" != "1" ]; then
  if ! faiss_gpu; then
    wheel=$(ls "${FAISS_WHEELS:-.whl}"/faiss_gpu_cu12-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$wheel" ]; then
      echo "gpu_check: installing $wheel (faiss with GPU support)"
      "$PY" -m pip install --quiet --no-deps --force-reinstall "$wheel"
    fi
  fi
  "$PY" -m benchmarks.faiss_gpu_check
  echo "faiss_gpu_check: $(( $(date +%s) - start )) s"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp benchmarks/results/amp_check_cuda.* benchmarks/results/throughput_gpu.* "$OUT"/
  cp benchmarks/results/faiss_gpu.* "$OUT"/ 2>/dev/null || true
fi
