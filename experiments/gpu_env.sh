# Sourced by the GPU scripts (gpu_check.sh, gpu_compile.sh) with the script's name, e.g.
#   source "$(dirname "$0")/gpu_env.sh" gpu-check
# From the repository root: output folder $OUT (default experiments/results/<date>-<name>),
# everything printed also to $OUT/<name>.log, the wheel's install folder .site/ and src/ on
# PYTHONPATH, $PY the interpreter (default python3). `finish RC` flushes the log and exits.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${OUT:-experiments/results/$(date +%F)-$1}
mkdir -p "$OUT"
exec > >(tee "$OUT/${1//-/_}.log") 2>&1
tee_pid=$!
export PYTHONPATH=$PWD/.site:$PWD/src
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1  # the log keeps the order of what was printed, and what a killed phase printed
PY=${PY:-python3}

finish() {
    exec >&- 2>&-  # close the pipe to tee and let it write the log's last lines before exiting
    wait "$tee_pid"
    exit "$1"
}
