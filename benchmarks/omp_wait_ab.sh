#!/usr/bin/env bash
# Two OpenMP runtimes share the CPU step: torch's bundled libgomp and the system libgomp behind numba's omppool
# (it links libgomp.so.1.0.0 by file name, so it never binds to torch's copy). perf on a live N=800 reproduction
# run puts about a fifth of the samples in libgomp, i.e. threads spinning after their parallel regions. Does a
# passive wait policy, a short spin or numba's workqueue layer beat the default? Fresh processes, alternated.
#   benchmarks/omp_wait_ab.sh [repeats] [negatives]     (MF + MML on Gowalla, B=256, 2 threads, 80 steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
export MMLEXP_DATA_DIR="${MMLEXP_DATA_DIR:-$(cd .. && pwd)/shared/data}"
PY="${PY:-.venv/bin/python}"
N="${2:-800}"
run() { env "$@" "$PY" benchmarks/bench_training.py --worker mmlexp --batch 256 --negatives "$N" --steps 80 \
  --threads 2 | tail -1 | "$PY" -c "import json, sys; print(f\"{json.load(sys.stdin)['rate']:>9,.0f} int/s\")"; }
for _ in $(seq "${1:-3}"); do
  echo "default (spin)          $(run NOTHING=1)"
  echo "OMP_WAIT_POLICY=PASSIVE $(run OMP_WAIT_POLICY=PASSIVE)"
  echo "GOMP_SPINCOUNT=1000     $(run GOMP_SPINCOUNT=1000)"
  echo "numba workqueue         $(run NUMBA_THREADING_LAYER=workqueue)"
done
