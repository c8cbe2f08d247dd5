#!/usr/bin/env bash
# GPU check (run on a machine with an NVIDIA GPU): W3 on the Ray runtime with 4 actors sharing one GPU
# (num_gpus = 0.25 each) vs the same on CPU actors; prints steady-state seconds per round for both.
# Usage: bash benchmarks/gpu_check.sh   (after `make install TORCH=torch` for a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"
for mode in cpu gpu; do
  if [ "$mode" = gpu ]; then sets=(--set run.resources.num_gpus=0.25 --set run.resources.max_actors=4); else sets=(--set client.device='"cpu"'); fi
  $PY runners.py fedsim-ray bench-w3 "${sets[@]}" | tail -1 | $PY -c "
import json, sys; d = json.load(sys.stdin); r = d['round_s'][1:]
print('$mode', 'steady s/round', round(sum(r) / len(r), 4), 'final', d['final'])"
done
