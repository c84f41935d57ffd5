#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one go (about 6 minutes on an H100/H200):
#   1. tests/test_cuda.py (+ the CUDA evaluation test): CUDA against CPU references, every option through train(cfg);
#   2. benchmarks/bench_training.py --device cuda: mmlexp vs the plain loop, side by side, N = 100 and 800, B = 256 and 1024;
#   3. the real entrypoint with device=auto on Gowalla at N = 800 (B = 256, then 1024): seconds per epoch,
#      sampling and full-ranking evaluation included (RecZoo's MF-CCL took about 213 s per epoch on a P100).
# Needs the Gowalla files under $MMLEXP_DATA_DIR (default ../shared/data) and python3 with torch, hydra-core,
# omegaconf, scipy, pandas, tqdm, platformdirs, pytest (MLflow is not needed: tracking.enabled=false).
# Logs go to $OUT (default /tmp/gpu_check).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MMLEXP_DATA_DIR="${MMLEXP_DATA_DIR:-$PWD/../shared/data}" MMLEXP_CACHE_DIR="${MMLEXP_CACHE_DIR:-/tmp/mmlexp-cache}"
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
step() { echo; echo "=== $1 ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/device.txt"

step "tests on CUDA"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py "tests/test_evaluation.py::test_cuda_matches_cpu" \
    2>&1 | tee "$OUT/tests.txt" | tail -15

step "throughput: mmlexp vs plain loop on CUDA"
timeout 170 "$PY" benchmarks/bench_training.py --device cuda --steps 300 --repeats 1 --negatives 100 800 \
    --batch 256 1024 --no-malloc-column 2>&1 | tee "$OUT/throughput.txt"

for batch in 256 1024; do
    step "Gowalla, MF + MML, N=800, B=$batch, device=auto, through python -m mmlexp"
    timeout 100 "$PY" -m mmlexp dataset=gowalla num_negatives=800 trainer.batch_size=$batch trainer.epochs=2 \
        device=auto tracking.enabled=false tracking.save_checkpoint=false trainer.progress=false \
        hydra.run.dir="$OUT/run_b$batch" 2>&1 | grep -v "^best epoch" | tee "$OUT/epoch_b$batch.txt" | cut -c1-220
done
step "done"
