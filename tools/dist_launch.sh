#!/usr/bin/env bash
# Shared body of dist_test.sh / dist_train.sh: run TOOL with NPROC processes on this machine.
#   bash tools/dist_launch.sh TOOL NPROC NPOS [TOOL args]   (NPOS: the tool's positional args)
# Environment: PYTHON (default: python on the PATH), PORT (default 29500), NNODES (1),
# NODE_RANK (0), MASTER_ADDR (127.0.0.1). Without CUDA the processes talk
# over gloo (--cfg-options env_cfg.dist_cfg.backend=gloo is added).
set -euo pipefail
TOOL=$1
NPROC=$2
NPOS=$3
shift 3
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC must be a positive integer, got '$NPROC'" >&2
    exit 2
fi
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
EXTRA=()
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    EXTRA=(--cfg-options env_cfg.dist_cfg.backend=gloo)
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$ROOT/tools/$TOOL" "${@:1:$NPOS}" --launcher pytorch "${EXTRA[@]}" "${@:$((NPOS + 1))}"
