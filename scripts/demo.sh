#!/usr/bin/env bash
# The main job on the embedded data (no downloads): train a ResNet-50 baseline on scikit-learn's
# digits, then prune 20% of its weights, fine-tune, evaluate and write runs/resnet50_prune20/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/modelshrink run recipes/digits_resnet50_baseline.yaml --force
.venv/bin/modelshrink run recipes/resnet50_prune20.yaml --force
echo "report: runs/resnet50_prune20/report.md"
