#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: the real GPU detected by the agent, offered in the plan,
# assigned to a `--gpu 1` task that prints `nvidia-smi -L` and torch.cuda.get_device_name(0), checks
# torch.cuda.is_available() and runs a matmul on the device; two tasks never share a GPU; and, with
# GPU_IMAGE naming a local image with nvidia-smi, a container task given its GPU.
#
#   bench/gpu_check.sh            (from the repository root, with .venv built by dev/setup)
#
# Everything runs in a throw-away HOME (its own embedded server, agent and database) and is stopped at
# the end. torch is taken from the first Python on this machine that has it (TORCH_PYTHON=... to choose);
# without one the task says so and the rest of the check still runs. Exit codes: 0 the GPU was detected,
# offered and assigned; 1 a step failed; 2 this machine has no usable NVIDIA GPU (nothing was started).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV_BIN="$ROOT/.venv/bin"
DSTACK="$VENV_BIN/dstack"
PYTHON="$VENV_BIN/python"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: this machine has no nvidia-smi, so no NVIDIA GPU to check; nothing was run" >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi cannot reach a GPU here ($(nvidia-smi -L 2>&1 | head -1)); nothing was run" >&2
    exit 2
fi
[ -x "$DSTACK" ] || { echo "gpu_check: $DSTACK is missing; run dev/setup first" >&2; exit 1; }

if [ -z "${TORCH_PYTHON:-}" ]; then
    for candidate in python3 /usr/bin/python3 /usr/local/bin/python3 "$PYTHON"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
            TORCH_PYTHON=$(command -v "$candidate")
            break
        fi
    done
fi
TORCH_PYTHON=${TORCH_PYTHON:-python3}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dstack-gpu-check.XXXXXX")
export HOME="$WORK/home"
export PATH="$VENV_BIN:$PATH"
mkdir -p "$HOME/project"

cleanup() {
    # Every process started under this HOME (server, agent, task), by pid.
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}; pid=${pid%/environ}
        [ "$pid" = "$$" ] && continue
        if grep -qxz "HOME=$HOME" "$environ" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

section() { printf '\n== %s\n' "$1"; }

section "GPUs on this machine (nvidia-smi -L)"
nvidia-smi -L

section "what the agent detects (dstack.agent.gpus)"
"$PYTHON" - <<'EOF'
from dstack.agent.gpus import detect_gpus

gpus = detect_gpus()
for gpu in gpus:
    print(f"  index {gpu['index']}: {gpu['name']}, {gpu['memory_bytes'] / 2**30:.1f} GiB, {gpu['uuid']}")
if not gpus:
    raise SystemExit("gpu_check: the agent detected no GPU although nvidia-smi lists one")
EOF

cd "$HOME/project"
cat > .dstack.yml <<'EOF'
type: task
commands:
  - echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"
  - nvidia-smi -L
  - sleep ${HOLD:-0}
  - |
    "$TORCH_PYTHON" -c "
    import torch
    print('torch sees', torch.cuda.device_count(), 'GPU(s):', torch.cuda.get_device_name(0))
    print('torch.cuda.is_available():', torch.cuda.is_available())
    a = torch.randn(1024, 1024, device='cuda')
    b = a @ a
    torch.cuda.synchronize()
    print('a 1024x1024 matmul ran on', b.device, '- finite:', bool(torch.isfinite(b).all()))
    " || echo "torch is not available to $TORCH_PYTHON (set TORCH_PYTHON to a Python with torch)"
EOF

section "offered (dstack offer --gpu 1)"
"$DSTACK" offer --gpu 1

section "the plan and the run (dstack run . -y --gpu 1)"
"$DSTACK" run . -y --gpu 1 -n gpu-check -e TORCH_PYTHON="$TORCH_PYTHON"

section "assigned (dstack ps -a -v)"
"$DSTACK" ps -a -v

section "two GPU tasks at once: the second gets another GPU, or (one GPU) is refused with the reason"
"$DSTACK" run . -y -d --gpu 1 -n gpu-hold -e HOLD=60 -e TORCH_PYTHON="$TORCH_PYTHON" >/dev/null
for _ in $(seq 100); do
    "$DSTACK" ps | grep -q "gpu-hold .*running" && break
    sleep 0.2
done
"$DSTACK" run . -y --gpu 1 -n gpu-check-2 -e TORCH_PYTHON="$TORCH_PYTHON" || true
"$DSTACK" logs gpu-hold | head -1
"$DSTACK" stop gpu-hold -y -x >/dev/null || true

section "a container given its GPU (GPU_IMAGE: a local image with nvidia-smi; skipped without one)"
if [ -n "${GPU_IMAGE:-}" ] && command -v docker >/dev/null 2>&1 && docker image inspect "$GPU_IMAGE" >/dev/null 2>&1; then
    mkdir -p "$HOME/container"
    printf 'type: task\nimage: %s\ncommands:\n  - echo "in the container: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"\n  - nvidia-smi -L\n' \
        "$GPU_IMAGE" > "$HOME/container/.dstack.yml"
    (cd "$HOME/container" && "$DSTACK" run . -y --gpu 1 -n gpu-container) || echo "gpu_check: the container run failed"
else
    echo "skipped: set GPU_IMAGE to a local image with nvidia-smi (and Docker with the NVIDIA runtime)"
fi
echo
echo "gpu_check: done"
