# Shared set-up for scripts/demo, scripts/test and scripts/bench (sourced, not run).
# Creates .venv if missing and installs the package (with EXTRAS) when its
# inputs changed; safe to run again and again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CKPTSURGERY_VENV:-$ROOT/.venv}"
EXTRAS="${EXTRAS:-}"
PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setting up $VENV with $PYTHON_BIN" >&2
  "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
fi
# Reinstall only when pyproject.toml or the extras changed since the last install.
STAMP="$VENV/.ckptsurgery-installed"
WANT="$(cat "$ROOT/pyproject.toml"; echo "extras=$EXTRAS")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing ckptsurgery${EXTRAS:+[$EXTRAS]} into $VENV (first run downloads TensorFlow)" >&2
  LOG="$VENV/.ckptsurgery-install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT${EXTRAS:+[$EXTRAS]}" >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "set-up failed: pip could not install ckptsurgery (full log: $LOG)" >&2
    exit 1
  fi
  printf '%s' "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
