#!/usr/bin/env bash
# 3D CT on a GPU: time and peak GPU memory of one 256x256x256 phantom volume from 8 views
# (demo scan -> ingest -> slice prior of the right architecture -> sample ct3d), for the fast
# default in fp32 and bf16 and the reference sampler. The prior is trained for only TRAIN steps
# (architecture and timing, not quality); set TRAIN=2000 (about 5 min on an H200) for a usable one.
# Run from the repository root on a machine with CUDA and the package installed:
#   bash benchmarks/ct3d_gpu256.sh OUTDIR            (MBIR_STEPS=200 for the full reference)
# Without a GPU (PY=python, SIZE=32 SL=16) it runs the same steps on the CPU as a smoke test.
# Optional: WHEELS=folder of wheels to install first (offline nodes, shared/offline/wheelhouse.sh).
set -u
OUT=${1:?out}; SIZE=${SIZE:-256}; SL=${SL:-256}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
W=${WORK:-results/ct3d_gpu256}   # scratch: scan, store, prior, posteriors
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/timeline.txt"; }
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-deps --no-index --no-build-isolation "$WHEELS"/* > /tmp/pip.txt 2>&1 || tail -5 /tmp/pip.txt
  python3 -m pip install -q --no-deps --no-build-isolation -e . >> /tmp/pip.txt 2>&1 || tail -5 /tmp/pip.txt
fi
if [ -z "${PY:-}" ]; then
  PY=python3; DEV=cuda; TH=8
  nvidia-smi --query-gpu=memory.used --format=csv,noheader -l 1 > /tmp/mem.csv 2>&1 &
else DEV=cpu; TH=1; fi
log "installed"
$PY -m diffinv demo-data ct -o $W/demo --seed 0 --set volumes=2 --set slices=$SL --set size=$SIZE --set angles=90 > /tmp/d.log 2>&1 || tail -3 /tmp/d.log
log "demo data"
$PY -m diffinv ingest ct $W/demo -o $W/ct.zarr > /tmp/i.log 2>&1 || tail -3 /tmp/i.log
log "ingested"
BASE="ct3d.data.volume_slices=$SL ct3d.data.train_volumes=1 ct3d.data.eval_volumes=1 ct3d.prior.network.widths=[32,64,128] ct3d.baselines.tv.lambdas=[0.03] ct3d.sampling.slice_batch=128 seed=0"
$PY -m diffinv train ct3d --data $W/ct.zarr -o $W/prior --config-set "$BASE ct3d.prior.train.steps=${TRAIN:-100} ct3d.prior.train.batch_size=16" --device $DEV --threads $TH --quiet > /tmp/t.log 2>&1 || tail -3 /tmp/t.log
log "prior (${TRAIN:-100} steps)"
M="ct3d.sampling.methods[0]"
FAST="$M.name=fast $M.solver=ddim $M.solver_options.eta=0.15 $M.guidance=admm_tv $M.guidance_options.lam=0.5 $M.guidance_options.rho=1.0 $M.guidance_options.cg_steps=3 $M.guidance_options.dims=[1,2,3] $M.steps=10"
MBIR="$M.name=mbir $M.solver=ddim $M.solver_options.eta=1.0 $M.guidance=admm_tv $M.guidance_options.lam=0.3 $M.guidance_options.rho=1.0 $M.guidance_options.cg_steps=1 $M.guidance_options.dims=[1,2,3] $M.steps=${MBIR_STEPS:-200}"
TASKS="ct3d.tasks[0].name=sv8 ct3d.tasks[0].views=8"
declare -A SPEC=([fast]="$FAST" [mbir]="$MBIR")
run() { # name precision limit samples
  s=$(date +%s.%N)
  timeout -k 5 ${3:-200} $PY -m diffinv sample ct3d --data $W/ct.zarr --prior $W/prior --task sv8 --method $1 -o $W/$1_$2.zarr \
    --config-set "$BASE $TASKS ${SPEC[$1]} ct3d.sampling.precision=$2 ct3d.sampling.samples=$4" --device $DEV --threads $TH > /tmp/s_$1_$2.log 2>&1 || tail -3 /tmp/s_$1_$2.log
  e=$(date +%s.%N)
  w=$($PY -c "import xarray as xr; d=xr.open_zarr('$W/$1_$2.zarr'); print(float(d.wall_time_s.values[0]), float(d.nfe.values[0]), dict(d.sizes))" 2>&1 | tail -1)
  log "sample $1 $2 samples=$4: job $(python3 -c "print(round($e-$s,1))") s; sampling wall_time_s, nfe, sizes: $w; peak MiB $(sort -n /tmp/mem.csv 2>/dev/null | tail -1)"
}
run fast fp32 70 2
run fast bf16 50 2
run mbir bf16 ${MBIR_LIMIT:-170} 2
log "done"
