#!/usr/bin/env bash
# Train with several processes on one machine (torchrun; see dist_launch.sh for the environment):
#   bash tools/dist_train.sh CONFIG NPROC [tools/train.py args]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG NPROC [tools/train.py args]" >&2
    exit 2
fi
CONFIG=$1 NPROC=$2
shift 2
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" train.py "$NPROC" 1 "$CONFIG" "$@"
