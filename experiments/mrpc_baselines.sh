#!/usr/bin/env bash
# The MRPC benchmark behind the README's numbers: the baselines in $BASELINES (default all four:
# layerlens,lora,full_ft,adalora, run in that order) for the seeds in $SEEDS (default 0,1,2), default backbone,
# data, epochs, batch size and evaluation for every baseline, as one Hydra multirun; then the report (Markdown,
# CSV, Pareto and time plots). Writes experiments/results/<date>-<UTC time>-mrpc-<baselines>/ with the machine
# description and the exact command. Extra arguments are passed to layerlens.run.
set -euo pipefail
cd "$(dirname "$0")/.."
baselines="${BASELINES:-layerlens,lora,full_ft,adalora}"
seeds="${SEEDS:-0,1,2}"
out="experiments/results/$(date -u +%F-%H%M)-mrpc-${baselines//,/-}"
mkdir -p "$out"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
cmd=(python -m layerlens.run -m task=mrpc baseline=$baselines seed=$seeds trainer.enable_progress_bar=false "$@")
{
  echo "command: ${cmd[*]}"
  echo "then:    python -m layerlens.report sweep=latest task_name=mrpc out_dir=$out"
  echo "store:   $MLFLOW_TRACKING_URI"
  echo "commit:  $(git rev-parse HEAD)"
} > "$out/command.txt"
python -m layerlens.provenance > "$out/machine.txt"  # date, CPU, memory, load, GPU, versions, commit
start=$(date +%s)
"${cmd[@]}"
echo "sweep wall time: $(( $(date +%s) - start )) s" >> "$out/machine.txt"
python -m layerlens.report sweep=latest task_name=mrpc out_dir="$out"
