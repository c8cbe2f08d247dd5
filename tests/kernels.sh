#!/usr/bin/env bash
# make test-kernels: the goldens and the vectorised-equality tests under every CPU kernel set torch can use on this
# machine (ATEN_CPU_CAPABILITY: default, then avx2 / avx512 where the CPU has them) and under 1 and 2 torch threads,
# as another machine would run them. The goldens also print their largest differences from the recording.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
best=$($PY -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
case "$best" in
  avx512) capabilities="default avx2 avx512" ;;
  avx2) capabilities="default avx2" ;;
  *) capabilities="default $best" ;;
esac
for cap in $capabilities; do
  for threads in 1 2; do
    echo "== ATEN_CPU_CAPABILITY=$cap, $threads torch thread(s)"
    export ATEN_CPU_CAPABILITY=$cap FEDSIM_TEST_THREADS=$threads
    (cd tests && "../$PY" golden.py compare golden)
    $PY -m pytest -q -p no:cacheprovider tests/test_stacked.py tests/test_stacked_dp_sgd.py
  done
done
