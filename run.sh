#!/usr/bin/env bash
# One entry point that sets up its own environment, then runs the demo, the tests, or a command.
#   ./run.sh demo            train teacher, student, student + KD on the synthetic scenes; print the table
#   ./run.sh test [ARGS]     the test suite (pytest ARGS)
#   ./run.sh setup           only create / update the virtual environment
#   ./run.sh python ...      any command inside the environment
# The environment is .venv (or $VENV), installed from the pinned versions in requirements/lock.txt.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
    local stamp="$VENV/.installed-lock"
    if [ -x "$VENV/bin/python" ] && cmp -s requirements/lock.txt "$stamp" 2>/dev/null \
        && cmp -s pyproject.toml "$VENV/.installed-pyproject" 2>/dev/null; then
        return
    fi
    echo "setting up $VENV (pinned versions from requirements/lock.txt) ..." >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
    "$VENV/bin/python" -m pip install --quiet -c requirements/lock.txt -e ".[dev,export,sweep,qat]"
    cp requirements/lock.txt "$stamp"
    cp pyproject.toml "$VENV/.installed-pyproject"
}

command="${1:-}"
shift || true
case "$command" in
    setup) setup ;;
    demo) setup; exec "$VENV/bin/python" -m segdistill.demo "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
    python) setup; exec "$VENV/bin/python" "$@" ;;
    *) echo "usage: ./run.sh demo | test [pytest args] | setup | python ARGS" >&2; exit 2 ;;
esac
