#!/usr/bin/env bash
# Regenerates the downstream pages of reports/ (Tables III-IV, Figs. 4-5 analogues) on phantom cohorts:
#   bash reports/downstream.sh [REPORT_WORK] [DOWNSTREAM_WORK] [STEPS]
# REPORT_WORK is the --work folder of `mmhvae report phantom-benchmark` (default runs/report): its trained
# models (every method, trained STEPS steps, default 300) are the synthesis methods compared here. Cohorts,
# networks and raw results go to DOWNSTREAM_WORK (default runs/downstream); the pages to reports/. A step whose results
# are already in DOWNSTREAM_WORK is not run again (delete them to recompute). The pages that use only the shipped
# demo model are reports/shipped_model.sh's, run at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/report}
OUT=${2:-runs/downstream}
M=.venv/bin/mmhvae
STEPS=${3:-300}  # the training budget whose models are compared (REPORT_WORK may hold several)
source reports/lib.sh
models=()
# The report's Table I methods (METHODS="mmhvae ..." for fewer: M2DN's 18 sampling steps make its synthesis the
# longest part on a CPU, about 10 minutes of the 36).
for method in ${METHODS:-mmhvae mopoe average concat-zeros mmgan resvit m2dn}; do
  # A method's own run folders are METHOD-<8-character digest>; variants (mmgan-lr2e-3-...) do not match.
  model=$(grep -l "^  max_steps: $STEPS\$" "$WORK"/runs/"$method"-????????/config.yaml | head -1)
  [ -n "$model" ] || { echo "no $method run of $STEPS steps in $WORK/runs" >&2; exit 2; }
  models+=("$(dirname "$model")/model.pt")
done
mkdir -p "$OUT"
simulate mr-only --subjects 16 --seed 7000 --missing complete
simulate us-test --subjects 8 --seed 7100 --missing complete
simulate us-test-alt --subjects 8 --seed 7200 --missing complete --us-probe alt
simulate us-supervised --subjects 4 --seed 7300 --missing complete
generated="bash reports/downstream.sh $WORK $OUT"

# Table III: rigid MR-to-ultrasound registration, directly or via synthesis (4 test subjects of us-test).
link_subjects "$OUT/registration-data" "$OUT/us-test" sub-000 sub-001 sub-002 sub-003
cmd="$M register --experiment --data $OUT/registration-data --model ${models[*]} --displacements 5 --out $OUT/registration --overwrite"
[ -f "$OUT/registration/registration.md" ] || eval "$cmd"
{ cat "$OUT/registration/registration.md"; echo;
  echo "The same experiment with the shipped demo model: [registration-shipped.md](registration-shipped.md)."; } \
  > "$OUT/registration-body.md"
page reports/registration.md "Registration downstream task (Table III analogue)" "$generated" "$cmd" "$OUT/registration-body.md"

# Table IV: tumour segmentation in acquired ultrasound, learnt from synthetic ultrasound.
cmd="$M segment experiment --model ${models[*]} --mr-data $OUT/mr-only --test default-probe=$OUT/us-test --test alt-probe=$OUT/us-test-alt --supervised-data $OUT/us-supervised --steps 1000 --out $OUT/segmentation --overwrite"
[ -f "$OUT/segmentation/table.md" ] || eval "$cmd"
page reports/segmentation.md "Segmentation downstream task (Table IV analogue)" "$generated" "$cmd" "$OUT/segmentation/table.md"
echo "wrote reports/registration.md reports/segmentation.md"

bash reports/shipped_model.sh "$OUT"
