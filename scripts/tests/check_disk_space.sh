#!/usr/bin/env bash
#
# Report the free space of every folder a dataloader checkpoint passes through, and RAM,
# each marked against the size a test needs. TensorFlow's GCS writer stages each whole
# checkpoint file in its temp folder (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp).
# Exit 0 when every location fits, 1 when one does not, 2 on bad input.

set -o errexit -o nounset -o pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
PYTHON="${PYTHON:-python3}"
small_need="500MB"
full_need="200GB"
which_test="both"
config_args=()

usage() {
  cat <<EOF
Usage: $(basename "$0") [--small SIZE] [--full SIZE] [--for small|full|both]
                          [--config-name NAME [--config-dir DIR] [key=value ...]]

Free space of TensorFlow's temp folder (and which variable chose it), /tmp,
LOCAL_STAGING_DIR, home, the current folder, and available RAM, each marked
against what a test needs.

  --small SIZE        need of the small-buffer test (default 500MB)
  --full SIZE         need of the full test (default 200GB)
  --for TEST          which column decides the exit code: small, full or both (default)
  --config-name NAME  take both needs from the measured estimate of this config
                      (runs the small-buffer script with --estimate-only; cached)
  -h, --help          this help

Exit codes: 0 every location fits, 1 one does not, 2 bad input.
EOF
}

err() {
  echo "✗ $*" >&2
}

# Bytes of a size such as 500MB, 1.5TB, 2GiB or a plain byte count.
to_bytes() {
  local size="$1"
  if [[ ! "${size}" =~ ^([0-9]+(\.[0-9]+)?)[[:space:]]*([KMGT]i?B?|B)?$ ]]; then
    err "size '${size}': expected e.g. 500MB, 200GB or a byte count"
    exit 2
  fi
  local number="${BASH_REMATCH[1]}" unit="${BASH_REMATCH[3]:-B}" factor
  case "${unit}" in
    B) factor=1 ;;
    K | KB) factor=1000 ;;
    M | MB) factor=1000000 ;;
    G | GB) factor=1000000000 ;;
    T | TB) factor=1000000000000 ;;
    Ki | KiB) factor=1024 ;;
    Mi | MiB) factor=1048576 ;;
    Gi | GiB) factor=1073741824 ;;
    Ti | TiB) factor=1099511627776 ;;
    *) err "size '${size}': unknown unit"; exit 2 ;;
  esac
  awk -v n="${number}" -v f="${factor}" 'BEGIN { printf "%.0f\n", n * f }'
}

human() {
  awk -v b="$1" 'BEGIN {
    split("TB GB MB KB", u, " "); s[1] = 1e12; s[2] = 1e9; s[3] = 1e6; s[4] = 1e3
    for (i = 1; i <= 4; i++) if (b >= s[i]) { printf "%.1f %s\n", b / s[i], u[i]; exit }
    printf "%d B\n", b }'
}

# Free bytes of the filesystem holding a folder (its nearest existing parent).
free_bytes() {
  local folder="$1"
  while [[ ! -e "${folder}" && "${folder}" != "/" ]]; do
    folder="$(dirname "${folder}")"
  done
  df -P -B1 "${folder}" | awk 'NR == 2 { print $4 }'
}

needs_from_config() {
  local report
  report="$(mktemp)"
  # shellcheck disable=SC2064
  trap "rm -f '${report}'" EXIT
  if ! "${PYTHON}" "${SCRIPT_DIR}/test_dataloader_checkpoint_small_buffer.py" --estimate-only --force \
    --report "${report}" "${config_args[@]}" >/dev/null; then
    err "the estimate for ${config_args[*]} failed (run the small-buffer script with --estimate-only to see why)"
    exit 2
  fi
  "${PYTHON}" -c 'import json, sys; e = json.load(open(sys.argv[1]))["estimate"]; print(e["tested_bytes"], e["original_bytes"])' "${report}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --small) small_need="${2:?--small needs a SIZE}"; shift 2 ;;
    --full) full_need="${2:?--full needs a SIZE}"; shift 2 ;;
    --for)
      which_test="${2:?--for needs small, full or both}"
      [[ "${which_test}" =~ ^(small|full|both)$ ]] || { err "--for ${which_test}: expected small, full or both"; exit 2; }
      shift 2 ;;
    --config-name | --config-dir) config_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    *=*) config_args+=("$1"); shift ;;
    *) err "unknown argument '$1' (see -h)"; exit 2 ;;
  esac
done

small_bytes="$(to_bytes "${small_need}")"
full_bytes="$(to_bytes "${full_need}")"
source_note="thresholds: flags/defaults"
if [[ ${#config_args[@]} -gt 0 ]]; then
  needs="$(needs_from_config)"
  read -r small_bytes full_bytes <<<"${needs}"
  source_note="thresholds: measured estimate of ${config_args[*]}"
fi

tf_var="default"
tf_dir="/tmp"
for var in TEST_TMPDIR TMPDIR TMP; do
  if [[ -n "${!var:-}" && -d "${!var}" ]]; then
    tf_var="${var}"
    tf_dir="${!var}"
    break
  fi
done

rows=(
  "TensorFlow temp folder (${tf_var})|${tf_dir}"
  "/tmp|/tmp"
  "LOCAL_STAGING_DIR|${LOCAL_STAGING_DIR:-(unset)}"
  "home|${HOME}"
  "current folder|${PWD}"
)

status=0
mark() {  # mark FREE NEED -> OK / NOT OK
  if (($1 >= $2)); then echo "OK"; else echo "NOT OK"; fi
}

echo "${source_note}; small-buffer test needs $(human "${small_bytes}"), full test $(human "${full_bytes}")"
printf '%-36s %-34s %10s  %-14s %-14s\n' "location" "path" "free" "small-buffer" "full test"
for row in "${rows[@]}"; do
  label="${row%%|*}"
  folder="${row#*|}"
  if [[ "${folder}" == "(unset)" ]]; then
    printf '%-36s %-34s %10s  %-14s %-14s\n' "${label}" "${folder}" "-" "-" "-"
    continue
  fi
  free="$(free_bytes "${folder}")"
  small_mark="$(mark "${free}" "${small_bytes}")"
  full_mark="$(mark "${free}" "${full_bytes}")"
  [[ "${small_mark}" == "NOT OK" && "${which_test}" != "full" ]] && status=1
  [[ "${full_mark}" == "NOT OK" && "${which_test}" != "small" ]] && status=1
  printf '%-36s %-34s %10s  %-14s %-14s\n' "${label}" "${folder}" "$(human "${free}")" "${small_mark}" "${full_mark}"
done
ram="$(awk '/^MemAvailable:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo)"
small_mark="$(mark "${ram}" "${small_bytes}")"
full_mark="$(mark "${ram}" "${full_bytes}")"
[[ "${small_mark}" == "NOT OK" && "${which_test}" != "full" ]] && status=1
[[ "${full_mark}" == "NOT OK" && "${which_test}" != "small" ]] && status=1
printf '%-36s %-34s %10s  %-14s %-14s\n' "RAM (available)" "-" "$(human "${ram}")" "${small_mark}" "${full_mark}"

if [[ -n "${TEST_TMPDIR:-}" && -n "${TMPDIR:-}" && "${TEST_TMPDIR}" != "${TMPDIR}" ]]; then
  echo "⚠ TEST_TMPDIR=${TEST_TMPDIR} silently overrides TMPDIR=${TMPDIR} for TensorFlow's temporary files"
fi
# TensorFlow's GCS filesystem reads GCS_* variables (timeouts, retries, caches); a large
# checkpoint's upload is bounded by GCS_WRITE_REQUEST_TIMEOUT_SECS, so show what is set.
gcs_settings="$(compgen -e | grep -E '^GCS_' | grep -vx 'GCS_TEST_BUCKET' || true)"
if [[ -n "${gcs_settings}" ]]; then
  echo "TensorFlow GCS settings:"
  while read -r var; do
    echo "  ${var}=${!var}"
  done <<<"${gcs_settings}"
fi
if ((status != 0)); then
  echo "✗ a location does not fit: free space there, or point TMPDIR / LOCAL_STAGING_DIR at a bigger disk"
fi
exit "${status}"
