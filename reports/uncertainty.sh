#!/usr/bin/env bash
# Calibrates the uncertainty of the shipped demo model and measures it on subjects that neither its training nor
# its calibration saw:
#   bash reports/uncertainty.sh [WORK]
# Cohorts and raw results go to WORK (default runs/uncertainty; existing cohorts are reused). Writes the
# calibration into models/phantom-tiny.pt (its weights and their checksum unchanged), reports/uncertainty.md and
# reports/uncertainty-*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/uncertainty}
M=.venv/bin/mmhvae
MODEL=models/phantom-tiny.pt
source reports/lib.sh
mkdir -p "$OUT"
# Seeds apart from training (< 1000), the model card's test cohorts (5000-7000) and the demo (9000).
simulate calibration --subjects 16 --seed 8000 --missing complete
simulate test --subjects 16 --seed 8500 --missing complete
cmd="$M calibrate --model $MODEL --data $OUT/calibration --out $MODEL --samples 8 --overwrite
$M analyse uncertainty --model $MODEL --data $OUT/test --out $OUT/analysis --samples 8 --overwrite"
eval "${cmd//$'\n'/ && }"
cp "$OUT/analysis/uncertainty_reliability.png" reports/uncertainty-reliability.png
cp "$OUT/analysis/uncertainty_sparsification.png" reports/uncertainty-sparsification.png
{ echo "The shipped demo model, calibrated on 16 phantom subjects (seed 8000) and tested on 16 others (seed 8500),"
  echo "all with every modality, so that every synthesis has a ground truth."; echo;
  sed '1d' "$OUT/analysis/uncertainty.md"; echo;
  echo "![reliability diagram](uncertainty-reliability.png)"; echo;
  echo "![sparsification curves](uncertainty-sparsification.png)"; } > "$OUT/uncertainty-body.md"
page reports/uncertainty.md "Calibrated uncertainty of the shipped model" "bash reports/uncertainty.sh $OUT" \
  "$cmd" "$OUT/uncertainty-body.md"
echo "wrote $MODEL (calibration), reports/uncertainty.md and its figures"
