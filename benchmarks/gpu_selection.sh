#!/usr/bin/env bash
# GPU check of model selection (run by hand on a CUDA machine, from the repo root; not a test).
#
# For each split seed (arguments; default "1 2"), in parallel: search.run (50 trials, 32x64x64, 4 epochs,
# confirmation at 12) and search.export on the default phantom set; then, one seed after the other,
# benchmarks/bench_selection.py scores the exported model (and its trained seed baseline, when export
# wrote one) on 300 fresh phantoms (seed 777). The missing pure-Python/cp312 dependencies come from the
# wheels in .whl/ (no internet needed).
#
#   bash benchmarks/gpu_selection.sh            # seeds 1 and 2
#   bash benchmarks/gpu_selection.sh 3 4 5      # other split seeds
#
# Files under $OUT (default /tmp/gsel/out), two per seed: run_s<S>.log, sel_s<S>.json; with RANDOM_SEEDS,
# one more per seed: run_r<S>.log, a plain random search without pruning on the same split (search
# efficiency: best confirmed score and training epochs spent, against the default sampler and pruner).
# Environment overrides (defaults in brackets): TRIALS [50], EPOCHS [4], CONFIRM_EPOCHS [12], N_FRESH [300],
# DEVICE [cuda] (cpu only for a smoke test of the script itself), RANDOM_SEEDS [none], SEARCH_TIMEOUT [none:
# seconds after which search.run starts no new trial, so a lease-bounded run still confirms and exports].
set -uo pipefail

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1

export PYTHONUNBUFFERED=1
W=/tmp/gsel
OUT=${OUT:-$W/out}
TRIALS=${TRIALS:-50}
EPOCHS=${EPOCHS:-4}
CONFIRM_EPOCHS=${CONFIRM_EPOCHS:-12}
N_FRESH=${N_FRESH:-300}
TIMEOUT_FLAGS=()
[ -n "${SEARCH_TIMEOUT:-}" ] && TIMEOUT_FLAGS=(--timeout "$SEARCH_TIMEOUT")
DEVICE=${DEVICE:-cuda}
read -r -a RANDOM_SEEDS <<< "${RANDOM_SEEDS:-}"
SEEDS=("$@")
[ "${#SEEDS[@]}" -gt 0 ] || SEEDS=(1 2)
mkdir -p "$OUT" "$W/studies" || exit 1

echo "== machine"
nvidia-smi -L || true
python3 -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('cuda available:', torch.cuda.is_available())"
python3 -c "import optuna, sqlalchemy, alembic, mako, colorlog, monai, nibabel; print('optuna', optuna.__version__, 'sqlalchemy', sqlalchemy.__version__, 'alembic', alembic.__version__, 'monai', monai.__version__, 'nibabel', nibabel.__version__)" || exit 1
echo "seeds: ${SEEDS[*]}; trials $TRIALS, epochs $EPOCHS, confirm epochs $CONFIRM_EPOCHS, fresh n $N_FRESH, device $DEVICE; OUT=$OUT"

echo "== default phantom set"
t0=$(date +%s)
python3 -c "from lungct.default_data import default_phantom_root; print(default_phantom_root('$W/studies', progress=False))" || exit 1
echo "WALL_PHANTOMS=$(( $(date +%s) - t0 ))"

# A rerun on the same machine starts each study afresh (otherwise search.run would resume and add trials,
# and export would refuse the existing model folder); the phantoms, scan cache and fresh set are kept.
for S in "${SEEDS[@]}" "${RANDOM_SEEDS[@]}"; do
    rm -rf "$W/studies/s$S" "$W/studies/s$S-artifacts" "$W/studies/s$S".db* "$W/studies/r$S"*
done

run_random() {
    local S=$1 log=$OUT/run_r$1.log t rc
    t=$(date +%s)
    python3 -m search.run --trials "$TRIALS" --studies-dir "$W/studies" --study "r$S" --split-seed "$S" --device "$DEVICE" \
        --size 32 64 64 --epochs "$EPOCHS" --confirm-epochs "$CONFIRM_EPOCHS" --max-gflops 3.26 --workers 4 \
        --sampler random --pruner none "${TIMEOUT_FLAGS[@]}" > "$log" 2>&1
    rc=$?
    { echo "WALL_SEARCH=$(( $(date +%s) - t ))"; echo "RC_SEARCH=$rc"; } >> "$log"
    return "$rc"
}

run_seed() {
    local S=$1 log=$OUT/run_s$1.log t rc
    t=$(date +%s)
    python3 -m search.run --trials "$TRIALS" --studies-dir "$W/studies" --study "s$S" --split-seed "$S" --device "$DEVICE" \
        --size 32 64 64 --epochs "$EPOCHS" --confirm-epochs "$CONFIRM_EPOCHS" --max-gflops 3.26 --workers 4 \
        "${TIMEOUT_FLAGS[@]}" > "$log" 2>&1
    rc=$?
    { echo "WALL_SEARCH=$(( $(date +%s) - t ))"; echo "RC_SEARCH=$rc"; } >> "$log"
    if [ "$rc" -ne 0 ]; then
        echo "export skipped: search.run failed" >> "$log"
        return "$rc"
    fi
    t=$(date +%s)
    python3 -m search.export --studies-dir "$W/studies" --study "s$S" --device "$DEVICE" --workers 4 >> "$log" 2>&1
    rc=$?
    { echo "WALL_EXPORT=$(( $(date +%s) - t ))"; echo "RC_EXPORT=$rc"; } >> "$log"
    return "$rc"
}

echo "== search + export (parallel)"
t0=$(date +%s)
pids=()
for S in "${SEEDS[@]}"; do
    run_seed "$S" &
    pids+=($!)
done
for S in "${RANDOM_SEEDS[@]}"; do
    run_random "$S" &
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    echo "seed ${SEEDS[$i]}: search+export exit $?"
done
wait
echo "WALL_SEARCH_EXPORT_ALL=$(( $(date +%s) - t0 ))"

echo "== fresh-phantom benchmark"
for S in "${SEEDS[@]}"; do
    M=$W/studies/s$S/model
    log=$OUT/run_s$S.log
    if [ ! -f "$M/metrics.json" ]; then
        echo "seed $S: no exported model at $M; benchmark skipped" | tee -a "$log"
        continue
    fi
    dirs=("$M")
    ref=$M
    if [ -d "$M/baseline" ]; then
        dirs+=("$M/baseline")
        ref=$M/baseline
    fi
    t=$(date +%s)
    python3 benchmarks/bench_selection.py "${dirs[@]}" --reference "$ref" --n "$N_FRESH" --phantom-seed 777 \
        --cache-dir "$W/fresh" --workers 8 --json "$OUT/sel_s$S.json" >> "$log" 2>&1
    rc=$?
    { echo "WALL_BENCH=$(( $(date +%s) - t ))"; echo "RC_BENCH=$rc"; } >> "$log"
done

echo "== search efficiency (training epochs spent, best scores)"
for name in "${SEEDS[@]/#/s}" "${RANDOM_SEEDS[@]/#/r}"; do
    python3 - "$W/studies" "$name" <<'PY' | tee -a "$OUT/run_${name}.log"
import sys

import optuna

studies, name = sys.argv[1], sys.argv[2]
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name=name, storage=f"sqlite:///{studies}/{name}.db")
trials = study.get_trials(deepcopy=False)
states = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
epochs = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
best = max((t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE), default=float("nan"))
decision = study.user_attrs.get("confirmation") or {}
rows = decision.get("candidates", [])
confirmed = max((r["confirmed"] for r in rows if r["confirmed"] is not None and not r["baseline"]), default=float("nan"))
base = next((r["confirmed"] for r in rows if r["baseline"]), float("nan"))
rec = decision.get("recommended", {})
print(f"EFFICIENCY {name}: trials {states}, search epochs {epochs}, best search score {best:.3f}, "
      f"best confirmed candidate {confirmed:.3f}, baseline confirmed {base:.3f}, recommended {rec.get('key')} "
      f"({rec.get('confirmed')})")
PY
done

echo "== summary"
for S in "${SEEDS[@]}"; do
    log=$OUT/run_s$S.log
    echo "---- seed $S ($log)"
    [ -f "$log" ] || { echo "(no log)"; continue; }
    grep -E '^fidelity:|^recommended:|^locked test part|^  (exported model|seed baseline) +AUC|difference in AUC|exported model is the seed baseline|^(error|[A-Za-z_.]+Error):|Traceback' "$log" | head -n 30
    sed -n '/^models (fresh AUC/,/^$/p; /^comparisons (difference/,/^$/p' "$log"
    grep -E '^(WALL|RC)_' "$log"
done
ls -l "$OUT"
