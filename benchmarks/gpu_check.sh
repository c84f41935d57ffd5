#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one go (about 8 minutes on an H100/H200, at most ~11 with every timeout):
#   1. tests/test_cuda.py (+ the CUDA evaluation test): CUDA against CPU references, every option through train(cfg),
#      the CUDA-graphed training step (trainer.cuda_graph) against the eager one;
#   1b. the graphed path through the entrypoint: MF on the embedded `sample`, trainer.cuda_graph=on; passes when the step
#      was captured and its first replay matched the eager step (mmlexp.graphed_step: loss within rtol 1e-4, weights
#      and Adam state within rtol 1e-4 / atol 1e-6) and nothing fell back to the eager step; the verdict is the
#      line "graphed path check: PASSED" (or FAILED, with the log's lines), also in $OUT/graph_check.txt;
#   2. benchmarks/bench_training.py --device cuda: mmlexp vs the plain loop, side by side, N = 100 and 800, B = 256 and 1024;
#   3. the real entrypoint with device=auto on Gowalla at N = 800, B = 256, trainer.cuda_graph=off then on: seconds per
#      epoch (the second), sampling and full-ranking evaluation included (RecZoo's MF-CCL: about 213 s per epoch on a P100);
#   4. 2 and 4 concurrent Gowalla runs (the same settings, graphed) on the one GPU: the total interactions/s of their
#      second epochs, next to the single run of step 3.
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

step "the graphed training step through python -m mmlexp (MF, sample, trainer.cuda_graph=on)"
timeout 120 "$PY" -m mmlexp dataset=sample encoder=mf num_negatives=100 trainer.epochs=2 device=cuda \
    trainer.cuda_graph=on tracking.enabled=false trainer.checkpoint=false trainer.resume=never trainer.progress=false \
    hydra.run.dir="$OUT/run_graph_sample" >"$OUT/graph_sample.txt" 2>&1
graph_rc=$?
# graph_verdict LOG RC: PASSED when the step was captured, its first replay matched the eager one, no fallback, rc 0
graph_verdict() {
    if [ "$2" = 0 ] && grep -q "captured the training step in a CUDA graph" "$1" \
        && grep -q "the first replayed step matched the eager one" "$1" && ! grep -q "runs eagerly" "$1"; then
        echo "PASSED ($(grep -o 'the first replayed step matched.*' "$1" | head -1))"
    else
        echo "FAILED (exit $2): $(grep -E 'CUDA graph|replayed|eagerly|Error' "$1" | cut -c1-300 | tr '\n' ' ')"
    fi
}
echo "graphed path check: $(graph_verdict "$OUT/graph_sample.txt" $graph_rc)" | tee "$OUT/graph_check.txt"

step "throughput: mmlexp vs plain loop on CUDA"
timeout 100 "$PY" benchmarks/bench_training.py --device cuda --steps 200 --repeats 1 --negatives 100 800 \
    --batch 256 1024 --no-malloc-column 2>&1 | tee "$OUT/throughput.txt"

# One Gowalla run, MF + MML, N = 800, B = 256, 2 epochs, no checkpoint: gowalla NAME SECONDS [OVERRIDES...]
gowalla() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$PY" -m mmlexp dataset=gowalla num_negatives=800 trainer.batch_size=256 trainer.epochs=2 \
        device=auto tracking.enabled=false tracking.save_checkpoint=false trainer.checkpoint=false \
        trainer.resume=never trainer.progress=false hydra.run.dir="$OUT/run_$name" "$@" >"$OUT/$name.txt" 2>&1
}
# interactions/s of the second epoch in a run's log ("train X s (N int/s)"); empty if it did not get there
rate() { sed -n 's/.*epoch 2  .*train .* s (\([0-9,]*\) int\/s).*/\1/p' "$OUT/$1.txt" | tr -d , | tail -1; }

for graph in off on; do  # off first: it also fills the parsed-data cache
    step "Gowalla, MF + MML, N=800, B=256, device=auto, trainer.cuda_graph=$graph, through python -m mmlexp"
    gowalla "graph_$graph" $([ $graph = off ] && echo 70 || echo 45) trainer.cuda_graph=$graph
    graph_rc=$?
    grep -E "epoch [0-9]|CUDA graph|replayed|eagerly|Error" "$OUT/graph_$graph.txt" | cut -c1-220
done
echo "graphed path check on Gowalla: $(graph_verdict "$OUT/graph_on.txt" $graph_rc)" | tee -a "$OUT/graph_check.txt"
off=$(rate graph_off) on=$(rate graph_on)
echo "second epoch: off ${off:-?} int/s, on ${on:-?} int/s" \
    "$([ -n "$off" ] && [ -n "$on" ] && awk -v a="$on" -v b="$off" 'BEGIN { printf "(on/off %.2fx)", a / b }')"

totals="1 run: ${on:-?} int/s (the trainer.cuda_graph=on run above)"
for n in 2 4; do
    step "$n concurrent Gowalla runs on the one GPU (N=800, B=256, 2 epochs each, graphed)"
    for i in $(seq 1 $n); do
        gowalla "concurrent${n}_$i" $((30 + 15 * n)) seed=$i &
    done
    wait
    total=0
    for i in $(seq 1 $n); do
        r=$(rate "concurrent${n}_$i")
        echo "run $i: ${r:-?} int/s (second epoch)"
        total=$((total + ${r:-0}))
    done
    totals="$totals; $n runs: $total int/s"
done
step "total interactions/s over concurrent runs (sum of the runs' second epochs): $totals"
step "graphed path checks"
cat "$OUT/graph_check.txt"
step "done"
