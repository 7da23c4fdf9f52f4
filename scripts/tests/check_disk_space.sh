#!/usr/bin/env bash
#
# Report the free space of every folder a dataloader checkpoint passes through, and RAM,
# each marked against the size a test needs. TensorFlow's GCS writer stages each whole
# checkpoint file in its temp folder (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp).
# Exit 0 when every location fits, 1 when one does not, 2 on bad input.
#
# The parsing and the arithmetic live in _disk_check.py (standard library only, so any
# python3 runs it; PYTHON chooses which): bash integers overflow on large sizes.

set -o errexit -o nounset -o pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

exec "${PYTHON:-python3}" "${SCRIPT_DIR}/_disk_check.py" "$@"
