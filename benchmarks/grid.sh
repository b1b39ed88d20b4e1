#!/usr/bin/env bash
# Run the issue-4 and issue-6 comparisons as parallel single-run processes and print both tables.
#
#   benchmarks/grid.sh RUNS_DIR           (env: DEVICE=auto|cuda|cpu, JOBS=parallel runs, WORKERS=loader
#                                          processes per run, MVC_SIZE=default, SET_SIZE=small,
#                                          SEEDS="0 1 2", NOISE="0.5 0.8 0.95", DEADLINE=seconds,
#                                          PYTHON=interpreter, GRID="mvc settings" (which tables),
#                                          SET_EPOCHS=4, SET_RATIO=0.5, SET_LIST="1 2 3 1m",
#                                          ARGS="more flags for both scripts", e.g. "--set grad_clip=10")
#
#   smoke test (about a minute on 2 cores: tiny data, tiny backbone, one epoch):
#   MVC_SIZE=tiny SET_SIZE=tiny SEEDS=0 NOISE=0.5 SET_EPOCHS=1 SET_LIST="1 2" JOBS=1 DEVICE=cpu \
#     ARGS="--preset tiny --backbone tiny --epochs 1" benchmarks/grid.sh /tmp/grid_smoke
#
# Jobs, longest first: MCIS and plain CAM at MVC_SIZE for each seed (benchmarks/mcis_vs_cam.py), then MCIS
# settings 1 / 1m (matched budget) / 2 / 3 for each seed and setting 3 at each web wrong-label rate of NOISE
# (benchmarks/mcis_settings.py). Every run writes its own result.json and is skipped when one exists, so the
# script resumes; runs still going at DEADLINE are stopped and missing from the tables.
set -uo pipefail
runs=${1:?usage: benchmarks/grid.sh RUNS_DIR}
DEVICE=${DEVICE:-auto} JOBS=${JOBS:-6} WORKERS=${WORKERS:-1} DEADLINE=${DEADLINE:-3600}
MVC_SIZE=${MVC_SIZE:-default} SET_SIZE=${SET_SIZE:-small} SEEDS=${SEEDS:-0 1 2} NOISE=${NOISE-0.5 0.8 0.95}
GRID=${GRID:-mvc settings} SET_EPOCHS=${SET_EPOCHS:-4} SET_RATIO=${SET_RATIO:-0.5} SET_LIST=${SET_LIST:-1 2 3 1m}
ARGS=${ARGS:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs/logs"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
# shellcheck disable=SC2206
extra_args=($ARGS)
mvc=("${PYTHON:-python}" "$here/mcis_vs_cam.py" --out "$runs/mvc" --size "$MVC_SIZE" --device "$DEVICE" --workers "$WORKERS"
  "${extra_args[@]}")
set_=("${PYTHON:-python}" "$here/mcis_settings.py" --out "$runs/settings" --size "$SET_SIZE" --device "$DEVICE"
  --workers "$WORKERS" --epochs "$SET_EPOCHS" --ratio "$SET_RATIO" "${extra_args[@]}")
# shellcheck disable=SC2086
noise_args=(--noise-rates $NOISE)

t0=$(date +%s)
[[ $GRID == *mvc* ]] && { "${mvc[@]}" --generate-only >"$runs/logs/gen_mvc.log" 2>&1 & }
[[ $GRID == *settings* ]] && { "${set_[@]}" --generate-only "${noise_args[@]}" >"$runs/logs/gen_settings.log" 2>&1 & }
wait || true
echo "data generated in $(($(date +%s) - t0)) s"

jobs_file="$runs/jobs.txt"
: >"$jobs_file"
if [[ $GRID == *mvc* ]]; then
  for s in $SEEDS; do echo "mvc_mcis_$s ${mvc[*]} --methods mcis --seeds $s" >>"$jobs_file"; done
  for s in $SEEDS; do echo "mvc_cam_$s ${mvc[*]} --methods cam --seeds $s" >>"$jobs_file"; done
fi
if [[ $GRID == *settings* ]]; then
  for s in $SEEDS; do
    for st in $SET_LIST; do echo "set_${st}_$s ${set_[*]} --settings $st --seeds $s" >>"$jobs_file"; done
  done
  for s in $SEEDS; do
    for r in $NOISE; do echo "noise_${r}_$s ${set_[*]} --settings 3@$r --noise-rates $r --seeds $s" >>"$jobs_file"; done
  done
fi
echo "$(wc -l <"$jobs_file") runs, $JOBS at a time, device $DEVICE"

left=$((DEADLINE - ($(date +%s) - t0)))
# each line: NAME COMMAND...; a run's output goes to logs/NAME.log
timeout --signal=INT --kill-after=20 "$left" xargs -P "$JOBS" -L 1 sh -c \
  'name=$0; start=$(date +%s); "$@" >"'"$runs"'/logs/$name.log" 2>&1; echo "$name rc=$? $(($(date +%s) - start)) s"' \
  <"$jobs_file"
echo "grid stopped after $(($(date +%s) - t0)) s"
[[ $GRID == *mvc* ]] && "${mvc[@]}" --summary-only
[[ $GRID == *settings* ]] && "${set_[@]}" --summary-only
exit 0
