#!/usr/bin/env bash
# GPU check, on a machine with an NVIDIA GPU (after `make install TORCH=torch` for a CUDA build of torch):
# W3 (CNN on digits), W4 (pfl-research's CIFAR-10 set-up on synthetic images, 1.6M-parameter CNN) and W5 (a
# ResNet-18 with GroupNorm, 50 clients x 50 images) with the
# clients on the GPU, inline one after another vs vectorised, the vectorised engine before early reduction (one
# reply per client: run.reduce_early = false) and after, and W4 vectorised on Ray with 4 actors sharing the GPU
# (num_gpus = 0.25 each). Prints the card, then steady-state seconds per round (rounds 2..R), ratios to the
# sequential engine, and final accuracies (the same for every runner of a workload); then where a vectorised W4 and
# W5 round's time goes, with and without early reduction (round_profile.py --both).
# Usage: bash benchmarks/gpu_check.sh        (DEVICE=cpu bash benchmarks/gpu_check.sh: the same table on CPU)
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"
fi
run() {  # SCENARIO RUNNER LABEL [--set k=v ...] -> "SCENARIO LABEL {json}"
  echo "$1 $3 $($PY runners.py "$2" "$1" --set client.device="\"$DEVICE\"" "${@:4}" | tail -1)"
}
{
  for workload in bench-w3 bench-w4 bench-w5; do
    run "$workload" fedsim-sequential fedsim-sequential
    run "$workload" fedsim-vectorized vectorized-one-reply-each --set run.reduce_early=false
    run "$workload" fedsim-vectorized fedsim-vectorized
  done
  if [ "$DEVICE" = cuda ]; then
    run bench-w4 fedsim-ray fedsim-ray --set run.resources.num_gpus=0.25 --set run.resources.max_actors=4
  fi
} | $PY -c '
import json, sys
row = "{:10} {:26} {:>15} {:>13} {:>15}"
print(row.format("workload", "runner", "steady s/round", "x sequential", "final accuracy"))
sequential = {}
for line in sys.stdin:
    workload, runner, result = line.split(" ", 2)
    result = json.loads(result)
    steady = sum(result["round_s"][1:]) / (len(result["round_s"]) - 1)
    sequential.setdefault(workload, steady)
    accuracy = result["final"]["accuracy"]
    print(row.format(workload, runner, f"{steady:.4f}", f"{steady / sequential[workload]:.2f}", f"{accuracy:.4f}"))
'
$PY round_profile.py bench-w4 bench-w5 --rounds 3 --both --set client.device="\"$DEVICE\""
