#!/bin/bash
# SLURM launcher for the framestream streaming benchmark: one task per GPU, every node of the
# allocation, the whole mode x workers matrix in one job (one JSON per run and rank, one CSV
# row per run written by rank 0). Submit once per node count to fill the nodes axis:
#
#   for n in 1 2 4 8; do
#     sbatch --nodes=$n --export=ALL,DATA=s3://my-bucket/my_dataset \
#       benchmarks/streaming/slurm/benchmark_streaming.sh
#   done
#
# Environment knobs (all optional except where the default does not fit your cluster):
#   DATA       dataset root: local/shared path, s3://..., https://..., hf://datasets/ORG/NAME
#              (default: the synthetic benchmark dataset, generated into FRAMESTREAM_CACHE;
#              generate it once beforehand with `framestream bench --max-batches 1` so that
#              every rank does not generate it at the same time)
#   MODES      default "single sarm window"
#   WORKERS    DataLoader workers per rank, default "0 2 4 8"
#   BATCH      default 32
#   BATCHES    timed batches per run and rank, default 200
#   OUT        results folder on a shared filesystem, default bench-results/<job id>
#   STORAGE    fsspec storage options as JSON, e.g. '{"anon": true}' (default {})
#   EXTRA      further flags for benchmark_streaming.py, e.g. "--float --buffer-size 4000"
#   PYTHON     interpreter of the environment framestream is installed in (default python)
#
#SBATCH --job-name=framestream-bench
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8        # one task (rank) per GPU
#SBATCH --gpus-per-node=8          # the loader does not use the GPU; the layout is training's
#SBATCH --cpus-per-task=12         # cores per rank: DataLoader workers + the main process
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
#SBATCH --exclusive                # nothing else on the nodes: the ceiling needs every core

set -euo pipefail

# Run from the framestream checkout (sbatch starts in the submission directory).
REPO=${REPO:-$(pwd)}
cd "$REPO"

PYTHON=${PYTHON:-python}
MODES=${MODES:-"single sarm window"}
WORKERS=${WORKERS:-"0 2 4 8"}
BATCH=${BATCH:-32}
BATCHES=${BATCHES:-200}
OUT=${OUT:-bench-results/${SLURM_JOB_ID}}
STORAGE=${STORAGE:-"{}"}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

# Rendezvous for the gloo group that sums frames/s over the ranks of a node: the first host
# of the allocation. Rank, world size and local rank come from SLURM_PROCID, SLURM_NTASKS
# and SLURM_LOCALID, which srun sets per task (the benchmark reads them; RANK/WORLD_SIZE
# would take precedence if a wrapper such as torchrun set them).
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}

# One thread per process: DataLoader workers use 1 anyway, and OpenMP spinning in the main
# process would steal cores from the decoders.
export OMP_NUM_THREADS=1

ROOT_ARGS=()
if [[ -n "${DATA:-}" ]]; then
  ROOT_ARGS=(--root "$DATA")
fi

echo "framestream bench: ${SLURM_JOB_NUM_NODES} node(s) x ${SLURM_NTASKS_PER_NODE} task(s)," \
  "master ${MASTER_ADDR}:${MASTER_PORT}, modes [${MODES}], workers [${WORKERS}], out ${OUT}"

# shellcheck disable=SC2086  # MODES, WORKERS and EXTRA are word lists on purpose
srun --kill-on-bad-exit=1 --cpu-bind=cores \
  "$PYTHON" benchmarks/streaming/benchmark_streaming.py \
    "${ROOT_ARGS[@]}" \
    --mode $MODES \
    --num-workers $WORKERS \
    --batch-size "$BATCH" \
    --max-batches "$BATCHES" \
    --storage-options "$STORAGE" \
    --ceiling \
    --output-dir "$OUT" \
    --csv "$OUT/results.csv" \
    --quiet \
    $EXTRA

echo "results: $OUT/results.csv (plot: python benchmarks/streaming/plot_results.py" \
  "$OUT/results.csv --out $OUT/results.png)"
