#!/usr/bin/env bash
#
# Report the free space of every folder a dataloader checkpoint passes through, and RAM,
# each marked against the size a test needs. TensorFlow's GCS writer stages each whole
# checkpoint file in its temp folder (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp).
# Exit 0 when every location fits, 1 when one does not, 2 on bad input.
#
# The parsing and the arithmetic live in the dlckpt package's preflight/disk_check.py
# (standard library only, so any python3 runs it; PYTHON chooses which): bash integers
# overflow on large sizes. The project root goes on PYTHONPATH so a python3 without the
# package installed finds it too.

set -o errexit -o nounset -o pipefail

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly PROJECT_ROOT

interpreter="${PYTHON:-python3}"
if ! command -v "${interpreter}" >/dev/null 2>&1; then
  echo "✗ PYTHON=${interpreter}: no such interpreter (expected the path of a python3, or unset)" >&2
  exit 2
fi

PYTHONPATH="${PROJECT_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" exec "${interpreter}" \
  -m dlckpt.preflight.disk_check "$@"
