# Sourced by run_course.sh and test.sh: make (once) and activate the course's virtual
# environment. Needs only Python >= 3.9 with venv and pip. Reinstalls only when
# requirements.txt or pyproject.toml change. Set TLH_VENV to use another folder.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TLH_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating the course environment in $VENV (first run only; installing PyTorch takes a few minutes)"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.tlh-installed"
want="$(cat "$REPO/requirements.txt" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # (a machine-wide pip.conf may list local indexes; drop its noise about missing folders)
    {
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet -r "$REPO/requirements.txt"
        python -m pip install --quiet --no-deps -e "$REPO"
    } 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    python -m ipykernel install --sys-prefix --name python3 >/dev/null
    echo "$want" > "$stamp"
fi
cd "$REPO"
