# Shared by scripts/gpu_run.sh and benchmarks/gpu_suite.sh (sourced, not run): the usage text from the
# calling script's header comment, `[--dry-run] OUT_DIR` into DRY_RUN / OUT, ROOT (the repository),
# PYTHON (its .venv when present, else python3, unless PYTHON is set) and record_step (below).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

DRY_RUN=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "error: one OUT_DIR only" >&2; exit 2; }; OUT="$arg" ;;
  esac
done
[ -n "$OUT" ] || { echo "error: OUT_DIR missing" >&2; usage >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# record_step JSON_FILE NAME EXIT SECONDS LIMIT: add {"exit", "seconds", "limit_s", "timed_out"} under NAME
# in JSON_FILE (a phase or step that `timeout` ran: exit 124 or 137 means it ran out of time)
record_step() {
  "$PYTHON" - "$@" <<'PY'
import json, sys
path, name, status, took, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
records = json.load(open(path))
records[name] = {"exit": status, "seconds": took, "limit_s": limit, "timed_out": status in (124, 137)}
json.dump(records, open(path, "w"))
PY
}
