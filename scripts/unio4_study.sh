#!/usr/bin/env bash
# The Uni-O4 study of docs/unio4.md at the CPU budget: Uni-O4 (offline stages, then 50k online env steps)
# next to PPO from scratch and IQL fine-tuning at the same online budget, on three datasets x 2 seeds.
# Three `offrl sweep`s into one committed folder (resumable: re-run after a stop and finished runs are
# skipped, interrupted ones resume from their checkpoints), then one `offrl report`.
#
#   bash scripts/unio4_study.sh                  # everything (walker2d medium-replay is built first: a SAC run)
#   bash scripts/unio4_study.sh --report-only    # the report from the runs there are (+ ope.md: scripts/unio4_ope.py)
#   bash scripts/unio4_study.sh --dry-run        # print the 18 runs' commands (checks every flag), run nothing
#
# CPU budget (state it with the results): Q, V and BC nets 256-256 (official: Q 1024x2, V 512x3, BC 256x3),
# 50k critic steps (official 2M), at most 10 dynamics epochs, 50k joint BC steps (official 4 x 4e5),
# 2000 improvement steps with the OPE gate every 100 and member evaluations every 500, a 5k-step value
# re-fit, 50k online env steps. IQL: 50k offline + 50k online steps. PPO: 50k env steps.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs/results/runs/unio4}
report=${REPORT:-docs/results/unio4}
dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); fi
seeds=${SEEDS:-0 1}
datasets=(offrl/hopper/medium-v0 offrl/halfcheetah/medium-v0 offrl/walker2d/medium-replay-v0)
envs=(Hopper-v5 HalfCheetah-v5 Walker2d-v5)
common=(eval_every=10000 eval_episodes=10 progress=False)

if [ "${1:-}" != "--report-only" ]; then
  # shellcheck disable=SC2086
  offrl sweep --algos unio4 --datasets "${datasets[@]}" --seeds $seeds --out "$out" "${dry[@]}" \
    --set "q_hidden=256 256" "v_hidden=256 256" "bc_hidden=256 256" critic_steps=50000 model_max_epochs=10 \
          bc_steps=50000 improve_steps=2000 value_steps=5000 online_steps=50000 "${common[@]}"
  # shellcheck disable=SC2086
  offrl sweep --algos iql --datasets "${datasets[@]}" --seeds $seeds --steps 50000 --out "$out" "${dry[@]}" \
    --set online_steps=50000 checkpoint_every=10000 "${common[@]}"
  # shellcheck disable=SC2086
  offrl sweep --algos ppo --envs "${envs[@]}" --seeds $seeds --steps 50000 --out "$out" "${dry[@]}" --set "${common[@]}"
  if [ ${#dry[@]} -gt 0 ]; then exit 0; fi
  inc=()
else
  inc=(--include-unfinished)
fi
offrl report "$out" "${inc[@]}" --out "$report" \
  --title "Uni-O4 next to IQL fine-tuning and PPO (CPU budget, 50k online env steps)"
# the OPE ranking against real returns, and the stage scores, of the finished Uni-O4 runs
if compgen -G "$out/unio4/*/seed*/summary.json" > /dev/null; then
  python scripts/unio4_ope.py "$out" --json "$report/ope.json" > "$report/ope.md"
fi
