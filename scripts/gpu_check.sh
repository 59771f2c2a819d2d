#!/usr/bin/env bash
# The first GPU check of offrl (about 8 minutes on one H200): the environment, the device tests on
# CUDA (correctness), then update speed eager and compiled (compile time apart) with peak memory,
# and stacked seeds (5 seeds per update).
#
# Here (once):   bash scripts/gpu_wheels.sh            # wheels the GPU machine lacks, into .whl/
# There:         bash scripts/gpu_check.sh              # writes to $OUT (or /tmp/gpu_check)
#
# Correctness lives in tests/test_device.py (OFFRL_TEST_DEVICE=cuda): every replay-trained
# algorithm's updates on the device, act on numpy, save -> load on CPU (close) and CUDA (equal),
# plain torch.load of a CUDA checkpoint (CPU tensors), a capturable optimizer resumed on the CPU,
# the training device's RNG round trip, the exact NN search with TF32 on, CPU vs CUDA updates from
# the same weights and batch, and a compiled step followed by a CPU load.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OFFRL_TEST_DEVICE=cuda MUJOCO_GL=egl
python3 - <<'PY' 2>&1 | tee "$out/env.json"
import json, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
                  "allow_tf32": torch.backends.cuda.matmul.allow_tf32, "matmul_precision": torch.get_float32_matmul_precision()}))
PY
timeout 200 python3 -m pytest tests/test_device.py -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/device_tests.log"
: > "$out/bench.jsonl"
for algo in iql td3_bc odice a2pr sac cql; do
  for mode in "" "--compile"; do
    timeout 120 python3 -m offrl.cli bench update --algo $algo --device cuda --steps 2000 $mode 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
  done
done
timeout 120 python3 -m offrl.cli bench update --algo prdc --device cuda --steps 2000 --rows 1000000 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
# whole-update CUDA graphs (offrl/graphs.py), against the eager and compiled rows above
for algo in iql td3_bc a2pr bc; do
  timeout 120 python3 -m offrl.cli bench update --algo $algo --device cuda --steps 2000 --cuda-graph 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
done
# stacked seeds (offrl/stacked.py): seed-updates/s of 5 seeds in one update, against the eager single-seed rows above
for algo in iql td3_bc; do
  timeout 120 python3 -m offrl.cli bench update --algo $algo --device cuda --steps 2000 --stack 5 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
done
# the whole PPO loop with the policy on the GPU (issue: env steps/s on a GPU), 1 and 8 env copies
timeout 120 python3 -m offrl.cli bench loop --algo ppo --env Hopper-v5 --device cuda --steps 20480 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
timeout 120 python3 -m offrl.cli bench loop --algo ppo --env Hopper-v5 --device cuda --steps 20480 -- --num-envs 8 --num-steps 256 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
echo "done: $out"
