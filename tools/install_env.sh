#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install this project into it.
#
#   bash tools/install_env.sh            -> prints the venv path on its last line
#
# The venv and the locally built mmcv wheel live under ${GLIDE_CACHE:-~/.cache/glide-mmagic}, keyed by a hash
# of the pins, so a fresh clone reuses them. mmcv 2.1.0 has no prebuilt wheel for torch >= 2.2; the first run
# builds it from source with CPU ops (about 40 minutes on 2 cores), later runs take seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${GLIDE_CACHE:-$HOME/.cache/glide-mmagic}
PYTHON=${PYTHON:-python3.11}
export MAX_JOBS=${MAX_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1
KEY=$(cat "$ROOT/requirements/runtime.txt" "$ROOT/requirements/lock.txt" "$ROOT/requirements/tests.txt" \
      | sha256sum | cut -c1-12)
VENV=${GLIDE_VENV:-$CACHE/venv-$KEY}
WHEELHOUSE=$CACHE/wheels-mmcv2.1.0-torch2.14.1
PIP="$VENV/bin/python -m pip"
LOCK="$ROOT/requirements/lock.txt"

if [ ! -f "$VENV/.complete" ]; then
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  # build tools for mmcv; setuptools < 81 because mmcv's setup.py imports pkg_resources
  $PIP install -q -c "$LOCK" torch torchvision setuptools wheel ninja psutil >&2
  if ! ls "$WHEELHOUSE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "building mmcv 2.1.0 with CPU ops (one time, ~40 min) into $WHEELHOUSE" >&2
    SRC=$(mktemp -d)
    $PIP download -q --no-deps --no-binary :all: --no-build-isolation mmcv==2.1.0 -d "$SRC" >&2
    tar xzf "$SRC"/mmcv-2.1.0.tar.gz -C "$SRC"
    # torch 2.14 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC"/mmcv-2.1.0/setup.py
    MMCV_WITH_OPS=1 $PIP wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$WHEELHOUSE.tmp" \
      "$SRC"/mmcv-2.1.0 >&2
    mv "$WHEELHOUSE.tmp" "$WHEELHOUSE"
    rm -rf "$SRC"
  fi
  $PIP install -q -c "$LOCK" --find-links "$WHEELHOUSE" -r "$ROOT/requirements/runtime.txt" \
    -r "$ROOT/requirements/tests.txt" >&2
  # mmagic's declared requirements pull versions its own imports break with: install it alone
  $PIP install -q --no-deps mmagic==1.2.0 >&2
  touch "$VENV/.complete"
fi
# the project itself (editable, so configs and tools in this checkout are the ones used)
$PIP install -q --no-deps --no-build-isolation -e "$ROOT" >&2
echo "$VENV"
