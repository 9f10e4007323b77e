#!/usr/bin/env bash
# One lent-GPU session of the gpu profile (PreActResNet18, CIFAR-10, seed 0), sized for the 15 minutes of device
# time a lent task gets (one call of at most 10 minutes). Run from the repository root on the GPU machine:
#
#   NGF_GIT_COMMIT=<commit> BUDGET=560 bash plans/gpu-lease.sh
#
# with cifar10_jpeg.npz copied into the git-ignored device_data/ (named in the call's carry). The records come back
# in $OUT/records.tgz (unpack over results/) and the log in $OUT/lease.log. Three phases, each under the budget:
#   1. the four models, four lanes at once on the GPU (a machine starts bare: their no-defense records are recomputed
#      so that no two lanes train one model; GPU arithmetic is not bit-reproducible, so they differ from the last
#      lease's by a few tenths of a point);
#   2. Table IV's timings: FT and NGF one after the other, alone on the GPU (skipped where their records exist);
#   3. what Table II still lacks, five lanes sharing the GPU, until the budget ends; a task still running then is
#      lost, everything finished is in the store. Measured on an H100 (2026-11-26): AWM, FP and NAD take seconds,
#      I-BAU and MCR about 90 s with six lanes sharing, ANP more than 340 s (it never finished), so ANP has a lane
#      per attack and Table V's all-layer runs wait for a follow-up call.
# A follow-up call on the same warm machine (within its 30 s idle window; its caches still hold the models) runs only
# the lanes given as arguments:  BUDGET=150 bash plans/gpu-lease.sh "defense:badnets:ngf-all" "defense:blend:ngf-all"
# On a bare machine, FRESH=1 with lanes as arguments runs only those lanes, in one phase, after removing the four
# models' No Defense records so that the lanes naming model:<attack> retrain and record them afresh:
#   FRESH=1 BUDGET=555 bash plans/gpu-lease.sh "model:badnets defense:badnets:ngf-all" "model:clb defense:clb:ngf" ...
# Each record carries jobs_sharing (set by the runner: how many lanes shared the GPU) and NGF_RUN_NOTE (the phase).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export NGF_DATA_DIR=${NGF_DATA_DIR:-$PWD/device_data} NGF_CACHE_DIR=${NGF_CACHE_DIR:-/tmp/ngfcache}
export NGF_RESULTS_DIR=${NGF_RESULTS_DIR:-/tmp/ngfres}
PY=${PY:-python3}; PROFILE=${PROFILE:-gpu}; BUDGET=${BUDGET:-560}; OUT=${OUT:-/tmp/ngf-lease-out}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT" "$NGF_RESULTS_DIR"
exec > >(tee "$OUT/lease.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
cp -rn "results/$PROFILE" "$NGF_RESULTS_DIR/" 2>/dev/null   # -n: a warm machine's newer records stay
R="$NGF_RESULTS_DIR/$PROFILE/cifar10"
mkdir -p "$R"
[ $# -eq 0 ] || [ "${FRESH:-0}" = 1 ] && for a in badnets blend troj-one sig; do rm -f "$R/${a}__p0.1__none__s0__"*.json; done
run() {  # run NOTE DEADLINE HARD lanes...
  local note=$1 dl=$2 hard=$3; shift 3
  echo "== $(date +%T) phase: $note (deadline ${dl} s, hard ${hard} s; $(left) s of the budget left)"
  NGF_RUN_NOTE="$note" $PY -m ngf_lib.runner --profile "$PROFILE" --deadline "$dl" --hard-deadline "$hard" --lanes "$@"
}
if [ $# -eq 0 ]; then
run "4 jobs shared one GPU (times inflated)" 60 $(( $(left) - 330 )) "model:badnets" "model:blend" "model:troj-one" "model:sig"
run "alone on the GPU" $(( $(left) - 300 )) $(( $(left) - 270 )) \
  "defense:badnets:ft defense:badnets:ngf defense:blend:ft defense:blend:ngf defense:troj-one:ft defense:troj-one:ngf defense:sig:ft defense:sig:ngf"
H=$(( $(left) - 25 ))
run "5 jobs shared one GPU (times inflated)" $(( H - 60 )) $H \
  "defense:badnets:anp" "defense:blend:anp" "defense:troj-one:anp" "defense:sig:anp" \
  "defense:blend:mcr defense:troj-one:mcr defense:sig:mcr defense:badnets:i-bau:val_size=0.05,lr=0.0001 defense:blend:i-bau:val_size=0.05,lr=0.0001"
else   # a follow-up call on the warm machine (its caches hold the models): only the lanes given as arguments
H=$(( $(left) - 25 ))
run "$# jobs shared one GPU (times inflated)" $(( H - 30 )) $H "$@"
fi
echo "== $(date +%T) done, $(left) s of the budget left"
tar czf "$OUT/records.tgz" -C "$NGF_RESULTS_DIR" "$PROFILE"
ls -la "$OUT"
