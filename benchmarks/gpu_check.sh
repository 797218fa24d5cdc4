#!/usr/bin/env bash
# GPU check of the training path (run by hand on one CUDA GPU, from the repo root; not a test). About 5
# minutes on one GPU, 8 at most:
#   1. the seed baseline's training speed at 64x128x128 (bf16 autocast, channels-last, data and
#      augmentation on the GPU): benchmarks/bench_training.py; target >= 1500 samples/s on one H100;
#   2. a 10-trial study at the GPU default fidelity (64x128x128) with few epochs (2 per fold, 4 in the
#      confirmation), from the default phantom set;
#   3. search.export --device cuda on that study, and search.predict with its model on the two real CT
#      scans (when shared/data/real-ct is there) or two phantoms.
# Every figure is printed beside the GPU's name. The missing pure-Python dependencies come from the
# wheels in .whl/ when they are missing (the device machine has no internet).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_check.sh       # a small smoke test of this script on a CPU
#
# Environment overrides (defaults in brackets): DEVICE [cuda], OUT [/tmp/gcheck/out], SCANS [400]
# (training scans per timed epoch of step 1), TRIALS [10].
set -uo pipefail

if [ -d .whl ] && ! python3 -c "import optuna, monai, nibabel, onnxscript" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
W=/tmp/gcheck
OUT=${OUT:-$W/out}
DEVICE=${DEVICE:-cuda}
SCANS=${SCANS:-400}
TRIALS=${TRIALS:-10}
if [ "$DEVICE" = cpu ]; then  # the smoke test: tiny sizes, so the script's logic runs in a few minutes
    SIZE=(--size 16 16 32) BENCH_SIZE=(--size 32 64 64) SCANS=20 PHANTOMS=(--phantoms 40) TRIALS=3
else
    SIZE=() BENCH_SIZE=(--size 64 128 128) PHANTOMS=()
fi
mkdir -p "$OUT" "$W/studies" || exit 1
rm -rf "$W/studies/gpu" "$W/studies/gpu.db" "$W/studies/gpu-artifacts"  # a rerun starts the study afresh

GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU (CPU run)')")
echo "== $GPU; torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)'); device $DEVICE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== 1. seed baseline training speed [$GPU]"
t=$(date +%s)
python3 benchmarks/bench_training.py --device "$DEVICE" "${BENCH_SIZE[@]}" --scans "$SCANS" --epochs 2 \
    --json "$OUT/training.json" 2>&1 | tee "$OUT/training.log"
echo "WALL_TRAINING_BENCH=$(( $(date +%s) - t )) s [$GPU]"

echo "== 2. search.run --trials $TRIALS at the GPU default, 2 epochs per fold, confirmation at 4 [$GPU]"
t=$(date +%s)
python3 -m search.run --trials "$TRIALS" --studies-dir "$W/studies" --study gpu --device "$DEVICE" --epochs 2 \
    --confirm-epochs 4 "${SIZE[@]}" "${PHANTOMS[@]}" --workers 8 > "$OUT/run.log" 2>&1
rc=$?
tail -n 25 "$OUT/run.log"
echo "WALL_SEARCH=$(( $(date +%s) - t )) s, exit $rc [$GPU]"
python3 - "$W/studies" <<'PY'
import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="gpu", storage=f"sqlite:///{sys.argv[1]}/gpu.db")
trained = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("samples_per_s")]
rates = sorted(t.user_attrs["samples_per_s"] for t in trained)
print(f"trials: {len(study.trials)}, trained {len(trained)}; training samples/s per trial: median "
      f"{rates[len(rates) // 2] if rates else float('nan'):.0f}, max {max(rates, default=float('nan')):.0f}; "
      f"precision {sorted({p for t in trained for p in t.user_attrs.get('precision', [])})}")
PY
[ "$rc" -eq 0 ] || exit "$rc"

echo "== 3. search.export --device $DEVICE, then search.predict [$GPU]"
t=$(date +%s)
python3 -m search.export --studies-dir "$W/studies" --study gpu --device "$DEVICE" --workers 8 > "$OUT/export.log" 2>&1
rc=$?
tail -n 15 "$OUT/export.log"
echo "WALL_EXPORT=$(( $(date +%s) - t )) s, exit $rc [$GPU]"
[ "$rc" -eq 0 ] || exit "$rc"
SCANS_TO_PREDICT=(../shared/data/real-ct/*.nii.gz)
[ -e "${SCANS_TO_PREDICT[0]}" ] || SCANS_TO_PREDICT=($(find "$W/studies" -path '*phantoms*' -name '*.nii.gz' | head -n 2))
t=$(date +%s)
python3 -m search.predict "$W/studies/gpu/model" "${SCANS_TO_PREDICT[@]}" --json \
    > "$OUT/predict.json" 2> "$OUT/predict.err"
rc=$?
cat "$OUT/predict.json" "$OUT/predict.err"
echo "WALL_PREDICT=$(( $(date +%s) - t )) s, exit $rc [$GPU]"
exit "$rc"
