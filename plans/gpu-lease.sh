#!/usr/bin/env bash
# One lent-GPU session of the gpu profile (PreActResNet18, CIFAR-10, seed 0), sized for the 15 minutes of device
# time a lent task gets (one call of at most 10 minutes). Run from the repository root on the GPU machine:
#
#   NGF_GIT_COMMIT=<commit> BUDGET=560 bash plans/gpu-lease.sh
#
# with cifar10_jpeg.npz copied into the git-ignored device_data/ (named in the call's carry). The records come back
# in $OUT/records.tgz (unpack over results/) and the log in $OUT/lease.log. Three phases, each under the budget:
#   1. the four models, four lanes at once on the GPU (their records are recomputed, so the timings below use them);
#   2. Table IV's timings: FT and NGF one after the other, alone on the GPU (their earlier records, measured with
#      four jobs sharing the GPU, are recomputed);
#   3. the rest of Table II (ANP, I-BAU, AWM, FP, NAD, MCR) and Table V (all layers), six lanes sharing the GPU,
#      until the budget ends; a task still running then is lost, everything finished is in the store.
# Each record carries NGF_RUN_NOTE, which says how many jobs shared the GPU when it was made.
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
cp -r "results/$PROFILE" "$NGF_RESULTS_DIR/" 2>/dev/null
R="$NGF_RESULTS_DIR/$PROFILE/cifar10"
mkdir -p "$R"
for a in badnets blend troj-one sig; do rm -f "$R/${a}__p0.1__none__s0__"*.json "$R/${a}__p0.1__ft__s0__"*.json \
  "$R/${a}__p0.1__ngf__s0__"*.json; done
run() {  # run NOTE DEADLINE HARD lanes...
  local note=$1 dl=$2 hard=$3; shift 3
  echo "== $(date +%T) phase: $note (deadline ${dl} s, hard ${hard} s; $(left) s of the budget left)"
  NGF_RUN_NOTE="$note" $PY -m ngf_lib.runner --profile "$PROFILE" --deadline "$dl" --hard-deadline "$hard" --lanes "$@"
}
run "4 jobs shared one GPU (times inflated)" 60 $(( $(left) - 330 )) "model:badnets" "model:blend" "model:troj-one" "model:sig"
run "alone on the GPU" $(( $(left) - 300 )) $(( $(left) - 270 )) \
  "defense:badnets:ft defense:badnets:ngf defense:blend:ft defense:blend:ngf defense:troj-one:ft defense:troj-one:ngf defense:sig:ft defense:sig:ngf"
H=$(( $(left) - 25 ))
run "6 jobs shared one GPU (times inflated)" $(( H - 60 )) $H \
  "defense:badnets:anp defense:badnets:i-bau:val_size=0.05 defense:badnets:nad defense:badnets:fp defense:badnets:mcr" \
  "defense:blend:anp defense:blend:i-bau:val_size=0.05 defense:blend:nad defense:blend:fp defense:blend:mcr" \
  "defense:troj-one:anp defense:troj-one:i-bau:val_size=0.05 defense:troj-one:awm defense:troj-one:nad defense:troj-one:fp defense:troj-one:mcr" \
  "defense:sig:anp defense:sig:i-bau:val_size=0.05 defense:sig:awm defense:sig:nad defense:sig:fp defense:sig:mcr" \
  "defense:badnets:ngf-all defense:badnets:sam-all defense:blend:ngf-all defense:blend:sam-all defense:troj-one:ngf-all defense:troj-one:sam-all" \
  "plan:sig:table3 plan:sig:table6 curv:sig:none curv:sig:cls-sgd curv:sig:ngf"
echo "== $(date +%T) done, $(left) s of the budget left"
tar czf "$OUT/records.tgz" -C "$NGF_RESULTS_DIR" "$PROFILE"
ls -la "$OUT"
