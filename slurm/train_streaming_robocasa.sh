#!/bin/bash
# Multi-node training over a streaming LeRobot v3.0 dataset with framestream + Accelerate.
#
# One SLURM task per node; each task starts the node's GPU processes with `accelerate launch`
# (or `torchrun`, see LAUNCHER). Every process streams its own episodes: the dataset reads its
# rank from Accelerate, the DataLoader is never dispatched from rank 0 (docs/training.md).
#
#   sbatch slurm/train_streaming_robocasa.sh
#   sbatch --nodes=4 --export=ALL,DATASET_URL=s3://my-bucket/robocasa,DUMMY=1 slurm/train_streaming_robocasa.sh
#
# Preemption / time limit: SLURM sends SIGTERM to every process of the step (then SIGKILL after
# the cluster's KillWait, often 30 s). The script checkpoints at the next step boundary (model,
# optimizer, step and every rank's stream position) and exits; with --requeue the job restarts
# and `--resume` continues the data stream where it stopped. Keep a step + a checkpoint well
# under KillWait, or checkpoint periodically (checkpoint_every in the config).
#
# Adapt the #SBATCH lines to your cluster (partition, account, GPUs per node, CPUs, time).
#SBATCH --job-name=fs-train-robocasa
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts GPUS_PER_NODE processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96           # DataLoader workers decode video: give them the cores
#SBATCH --mem=0                      # all the node's memory
#SBATCH --time=24:00:00
#SBATCH --requeue                    # restart after preemption; --resume picks up the stream
#SBATCH --open-mode=append           # keep the log of every attempt
#SBATCH --output=logs/%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my-account

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"          # submit from the repository root (paths below are relative)

# ----------------------------------------------------------------------- what to train on
# A local path, s3://bucket/prefix, https://..., or hf://datasets/<user>/<name>. Credentials
# come from the usual places (AWS_* variables, ~/.aws, HF_TOKEN); nothing is hard-coded here.
DATASET_URL=${DATASET_URL:-hf://datasets/my-org/robocasa-lerobot-v3}
# The YAML with a `dataset:` section (DatasetConfig fields) and a `train:` section (defaults for
# the script's options). Any field can be overridden below with --dataset.<field>=<value>.
CONFIG=${CONFIG:-configs/train_streaming_robocasa.yaml}
# Checkpoints and logs: must be on a filesystem every node sees (each rank writes its own
# stream state next to the model).
OUTPUT_DIR=${OUTPUT_DIR:-outputs/train_streaming_robocasa}
NUM_WORKERS=${NUM_WORKERS:-8}        # DataLoader workers per GPU process
DUMMY=${DUMMY:-0}                    # 1: no model, only load data and log frames/s/node
LAUNCHER=${LAUNCHER:-accelerate}     # accelerate | torchrun
MIXED_PRECISION=${MIXED_PRECISION:-bf16}  # no | fp16 | bf16 (Accelerate's autocast)
EXTRA_ARGS=${EXTRA_ARGS:-}           # e.g. "--max-steps 1000 --dataset.streaming_buffer_size=4000"

# ----------------------------------------------------------------------- the topology
NNODES=${SLURM_NNODES:-1}
# GPUs on each node: what SLURM granted (SLURM_GPUS_ON_NODE), else what the node has.
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
if [ "${GPUS_PER_NODE}" -lt 1 ]; then
    echo "no GPU found on this node; set GPUS_PER_NODE" >&2
    exit 1
fi
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
# Rendezvous on the first node of the allocation; the port is derived from the job id so two
# jobs sharing a node do not collide (override MASTER_PORT if your cluster restricts ports).
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export MASTER_ADDR MASTER_PORT

# ----------------------------------------------------------------------- environment
# One decoder thread per DataLoader worker is the right default; keep BLAS from oversubscribing.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# framestream's local byte cache for remote datasets: node-local disk, not the shared FS.
export FRAMESTREAM_CACHE=${FRAMESTREAM_CACHE:-${SLURM_TMPDIR:-/tmp}/framestream-cache-${USER:-user}}
# NCCL: uncomment what your fabric needs.
# export NCCL_DEBUG=WARN
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_IB_HCA=mlx5
mkdir -p logs "${OUTPUT_DIR}"

SCRIPT_ARGS=(
    --config "${CONFIG}"
    --root "${DATASET_URL}"
    --num-workers "${NUM_WORKERS}"
    --output-dir "${OUTPUT_DIR}"
    --metrics-json "${OUTPUT_DIR}/metrics-${SLURM_JOB_ID:-local}.json"
    --resume                          # latest checkpoint in OUTPUT_DIR, or a fresh start
)
if [ "${DUMMY}" = "1" ]; then
    SCRIPT_ARGS+=(--dummy)
fi
# shellcheck disable=SC2206  # EXTRA_ARGS is split on purpose
SCRIPT_ARGS+=(${EXTRA_ARGS})

echo "job ${SLURM_JOB_ID:-?}: ${NNODES} nodes x ${GPUS_PER_NODE} GPUs = ${WORLD_SIZE} processes," \
     "rendezvous ${MASTER_ADDR}:${MASTER_PORT}, dataset ${DATASET_URL}, launcher ${LAUNCHER}"

SCRIPT=examples/scaling/train_streaming_multinode.py
# torchrun does not set Accelerate's precision: pass it through the environment.
export ACCELERATE_MIXED_PRECISION=${MIXED_PRECISION}
export NNODES GPUS_PER_NODE WORLD_SIZE SCRIPT MIXED_PRECISION

# The per-node command runs inside `srun`, so SLURM_NODEID (the machine rank) must be expanded
# there, by each task, not here: hence the single quotes around `bash -c '...'`.
case "${LAUNCHER}" in
accelerate)
    srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
        exec accelerate launch \
            --multi_gpu \
            --num_machines "${NNODES}" \
            --num_processes "${WORLD_SIZE}" \
            --machine_rank "${SLURM_NODEID}" \
            --main_process_ip "${MASTER_ADDR}" \
            --main_process_port "${MASTER_PORT}" \
            --mixed_precision "${MIXED_PRECISION}" \
            --dynamo_backend no \
            "${SCRIPT}" "$@"' _ "${SCRIPT_ARGS[@]}"
    ;;
torchrun)
    # torchrun with the c10d rendezvous: node ranks are assigned by the rendezvous itself, and
    # a restarted node can rejoin (add --max-restarts N for in-job restarts).
    srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
        exec torchrun \
            --nnodes "${NNODES}" \
            --nproc_per_node "${GPUS_PER_NODE}" \
            --rdzv_id "${SLURM_JOB_ID}" \
            --rdzv_backend c10d \
            --rdzv_endpoint "${MASTER_ADDR}:${MASTER_PORT}" \
            "${SCRIPT}" "$@"' _ "${SCRIPT_ARGS[@]}"
    ;;
*)
    echo "LAUNCHER must be accelerate or torchrun, got ${LAUNCHER}" >&2
    exit 1
    ;;
esac
