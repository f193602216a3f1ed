#!/usr/bin/env bash
# Every GPU check in one command, for a machine lent for a few minutes:
#
#   benchmarks/gpu_check.sh OUT [SECONDS [RUN_ALL_ARGUMENTS...]]
#
# 1. benchmarks/gpu_smoke.py: versions, devices, and wnjax on the GPU against the same machine's
#    CPU. Where it does not run with the machine's packages (an exit code other than 0 and 3)
#    and .whl/ holds wheels of the pure-Python dependencies (at the versions this checkout is
#    tested with), they are installed to a temporary folder and the smoke run is repeated.
# 2. benchmarks/run_all.py --gpu within what is left of SECONDS (default 480), its results
#    folder archived to OUT/results.tgz after every script; further arguments go to run_all.py
#    (--quick, --only NAME...).
#
# OUT gets gpu_smoke.json, smoke.log, bench.log and results.tgz. PYTHON names the interpreter
# (default python3).
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT [SECONDS]}
budget=${2:-480}
shift $(($# > 1 ? 2 : 1))
py=${PYTHON:-python3}
start=$(date +%s)
mkdir -p "$out"
results=$(mktemp -d)/results
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX takes GPU memory as it needs it
$py benchmarks/gpu_smoke.py --out "$out" >"$out/smoke.log" 2>&1
code=$?
if [ $code -ne 0 ]; then  # 3: the GPU disagrees with the CPU; anything else: it did not run
  if [ $code -ne 3 ] && ls .whl/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    echo "--- again with .whl/: $(ls .whl)" >>"$out/smoke.log"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
      .whl/*.whl >>"$out/smoke.log" 2>&1
    export PYTHONPATH="$PWD:$site"
    $py benchmarks/gpu_smoke.py --out "$out" >>"$out/smoke.log" 2>&1 || echo "smoke run failed"
  fi
fi
cat "$out/smoke.log"
left=$((budget - ($(date +%s) - start)))
$py benchmarks/run_all.py --gpu --out "$results" --archive "$out/results.tgz" --deadline "$left" \
  "$@" 2>&1 | tee "$out/bench.log"
