#!/usr/bin/env bash
# Test with several processes on one machine (torchrun; see dist_launch.sh for the environment):
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py args]
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash $0 CONFIG CHECKPOINT NPROC [tools/test.py args]" >&2
    exit 2
fi
CONFIG=$1 CHECKPOINT=$2 NPROC=$3
shift 3
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" test.py "$NPROC" 2 "$CONFIG" "$CHECKPOINT" "$@"
