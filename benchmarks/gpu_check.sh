#!/usr/bin/env bash
# The GPU figures of the Performance section (bf16 latency at batch 16 and the ReMIND-sized epoch estimate at the
# paper setting) and the CUDA tests (tests/test_cuda.py), in one run on a GPU machine without network access whose
# Python has PyTorch, Lightning, scikit-image and pytest but not nibabel, MONAI or nilearn: those travel as wheels.
# Prepare them once on a machine with network access:
#   echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu_check.sh --fetch-wheels
# then copy the repository with its .whl folder to the GPU machine and run "bash benchmarks/gpu_check.sh" there
# (its steps' time limits add up to 520 s). Everything it prints also goes to $OUT/log.txt (runs/gpu-check where
# OUT is unset); it exits 1 if a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
  # shellcheck disable=SC2046  # one argument per pinned requirement
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    $(grep -iE '^(nibabel|monai|nilearn)==' constraints.txt)
fi
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "no wheels in .whl: run 'bash benchmarks/gpu_check.sh --fetch-wheels' here and carry .whl"; exit 2; }
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
mmhvae=(python3 -c 'import sys; from mmhvae.cli.main import main; sys.exit(main())')  # the package is not installed
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output also in $out/NAME.txt; go on if it fails
  local name=$1 limit=$2 status
  shift 2
  echo "== $name"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  status=${PIPESTATUS[0]}
  echo "== $name: exit $status"
  [ "$status" = 0 ] || failed=1
}
step machine 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"'
step cuda-tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
step paper-bf16 170 "${mmhvae[@]}" benchmark --configs paper --methods mmhvae --device cuda --precision bf16 --repeats 5 \
  --train-batches 4,16 --json "$out/paper-bf16.json"
step kernels-paper-bf16 50 python3 benchmarks/bench_kernels.py --config paper --device cuda --precision bf16 \
  --rounds 5 --train-batch 4 --json "$out/kernels-paper-bf16.json"
step tiny-bf16 80 "${mmhvae[@]}" benchmark --configs tiny --device cuda --precision bf16 --repeats 3 \
  --train-batches 16 --json "$out/tiny-bf16.json"
exit $failed
