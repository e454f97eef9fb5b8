#!/bin/sh
# Container entrypoint; also runs as is outside Docker (CI starts it on a CPU machine).
#   entrypoint.sh [serve|prepare|plan]   pick the backend, build/reuse cached engines, then serve
#   entrypoint.sh COMMAND [ARGS...]      run anything else instead (e.g. python -m cli info)
# The Python interpreter is $DGAE_PYTHON, else python3 from PATH (the image's virtualenv).
set -eu
ROOT=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
PYTHON=${DGAE_PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-serve}" in
    serve|prepare|plan) exec "$PYTHON" -m deploy.entrypoint "$@" ;;
    *) exec "$@" ;;
esac
