#!/usr/bin/env bash
# Launch fcn_jax training: one machine, several GPUs, a TPU VM pod slice, SLURM, or N local CPU processes.
# Prints the exact command before running it; --dry-run only prints. See README, "Scaling out".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
usage: launch.sh [--dry-run] MODE [MODE ARGS] CONFIG WORKDIR [--config.key=value ...]

modes:
  local                       one process over every device of this machine
  gpus                        one process over every GPU of this host, with XLA/NCCL settings for multi-GPU
  tpu NAME ZONE               every worker of the TPU VM slice NAME (gcloud compute tpus tpu-vm ssh --worker=all)
  slurm NODES TASKS_PER_NODE  srun with one task per GPU (TASKS_PER_NODE = GPUs per node); run it inside an allocation
  cpu-procs N                 N processes on this machine, coordinator on 127.0.0.1, fake CPU devices (for testing)

CONFIG and WORKDIR are relative to the repository root (the script runs there).
environment: PYTHON (default .venv/bin/python if present, else python3); CPU_DEVICES (cpu-procs: fake devices
  per process, default 2); PORT (cpu-procs: coordinator port, default a free one); TPU_REPO (tpu: the checkout
  on every worker, default ~/fcn_jax); TPU_PYTHON (tpu: default python3). XLA_FLAGS is kept and extended.
exit code 75: stopped by SIGTERM / SIGINT (preemption) after saving a checkpoint; run the same command to resume
  (SLURM requeueing and spot VMs: docs/scaling.md, "Preemption and requeueing").
EOF
}

die() {
  echo "launch.sh: $*" >&2
  usage >&2
  exit 2
}

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

show() {  # the command, shell-quoted so that it can be pasted as is
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

dry_run=0
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
[[ $# -gt 0 ]] || die "missing MODE"
mode="$1"
shift

case "$mode" in
  local | gpus) ;;
  tpu)
    [[ $# -ge 2 ]] || die "tpu needs NAME and ZONE"
    tpu_name="$1" tpu_zone="$2"
    shift 2
    ;;
  slurm)
    [[ $# -ge 2 ]] || die "slurm needs NODES and TASKS_PER_NODE"
    is_count "$1" || die "slurm NODES must be a positive integer, got '$1'"
    is_count "$2" || die "slurm TASKS_PER_NODE must be a positive integer, got '$2'"
    nodes="$1" tasks_per_node="$2"
    shift 2
    ;;
  cpu-procs)
    [[ $# -ge 1 ]] || die "cpu-procs needs N"
    is_count "$1" || die "cpu-procs N must be a positive integer, got '$1'"
    num_procs="$1"
    shift
    ;;
  *) die "unknown mode '$mode'" ;;
esac

[[ $# -ge 1 && "$1" != --* ]] || die "missing CONFIG"
[[ $# -ge 2 && "$2" != --* ]] || die "missing WORKDIR"
config="$1" workdir="$2"
shift 2
for arg in "$@"; do
  [[ "$arg" == --* ]] || die "unexpected argument '$arg' (overrides look like --config.key=value)"
done
cd "$ROOT"
[[ -f "${config%%:*}" ]] || die "config file '${config%%:*}' does not exist"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
train=(-m fcn_jax.main --config "$config" --workdir "$workdir" "$@")
# Multi-GPU: let XLA overlap the gradient all-reduce with the backward pass; give XLA 90% of GPU memory
# (default 75%); have NCCL print its warnings and errors (by default it prints nothing). Each is kept if set.
gpu_env=(
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
  "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
  "NCCL_DEBUG=${NCCL_DEBUG:-WARN}"
)

run() {
  show "$@"
  if [[ $dry_run == 0 ]]; then exec "$@"; fi
}

case "$mode" in
  local) run "$PYTHON" "${train[@]}" ;;
  gpus) run env "${gpu_env[@]}" "$PYTHON" "${train[@]}" ;;
  slurm)
    run env "${gpu_env[@]}" srun --nodes="$nodes" --ntasks-per-node="$tasks_per_node" --kill-on-bad-exit=1 \
      "$PYTHON" "${train[@]}" --distributed
    ;;
  tpu)
    remote="cd ${TPU_REPO:-~/fcn_jax} && ${TPU_PYTHON:-python3}$(printf ' %q' "${train[@]}" --distributed)"
    run gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$tpu_zone" --worker=all --command="$remote"
    ;;
  cpu-procs)
    cpu_devices="${CPU_DEVICES:-2}"
    is_count "$cpu_devices" || die "CPU_DEVICES must be a positive integer, got '$cpu_devices'"
    port="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    is_count "$port" || die "PORT must be a positive integer, got '$port'"
    pids=()
    # SIGTERM / SIGINT (or one process preempted, exit 75): every process saves the step they agree on and exits
    # 75; wait for them all, then exit 75 too ("resume me"), instead of leaving them behind.
    stop() {
      trap '' INT TERM
      kill -TERM "${pids[@]}" 2>/dev/null || true
      local code=$(( ${#pids[@]} ? 0 : 75 )) pid status  # stopped before any process started: "resume me" too
      for pid in "${pids[@]}"; do
        status=0
        wait "$pid" 2>/dev/null || status=$?
        if [[ $status == 75 ]]; then code=75; elif [[ $status != 0 && $status != 127 && $code == 0 ]]; then code=$status; fi
      done
      pids=()
      exit "${1:-$code}"
    }
    trap stop INT TERM
    trap '[[ ${#pids[@]} -eq 0 ]] || kill "${pids[@]}" 2>/dev/null || true' EXIT
    for ((i = 0; i < num_procs; i++)); do
      cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices"
        "$PYTHON" "${train[@]}" --coordinator_address="127.0.0.1:$port" --num_processes="$num_procs" --process_id="$i")
      show "${cmd[@]}"
      if [[ $dry_run == 0 ]]; then
        "${cmd[@]}" &
        pids+=("$!")
      fi
    done
    # The first process to fail stops the others, which would otherwise wait for it in a collective.
    for _ in "${pids[@]}"; do
      status=0
      wait -n || status=$?
      [[ $status != 75 ]] || stop 75
      [[ $status == 0 ]] || exit "$status"
    done
    pids=()
    ;;
esac
