#!/usr/bin/env bash
# Regenerate the hash-locked requirement files from the *.txt pins, from PyPI alone:
#   requirements.lock          <- requirements.txt      (the program, in the deploy/preview jobs)
#   requirements-dev.lock      <- requirements-dev.txt  (tests: .ci/run and the test jobs)
#   policy/requirements.lock   <- policy/requirements.txt (the policy pack's venv)
# Run after changing any requirements*.txt:  tools/lock_requirements.sh
# Installs use `pip install --require-hashes -r <lock>`: a file on PyPI that changes under a pinned
# version no longer installs. The locks are resolved for this interpreter: use the CI's Python (3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
want="3.11"
have="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$have" != "$want" ]]; then
  echo "lock with Python ${want} (the workflows' and .ci/run's), not ${have}: PYTHON=python${want} $0" >&2
  exit 2
fi

# PyPI only: no local wheel directories, extra indexes or constraint files from this machine's pip
# configuration, whose files would hash differently from PyPI's.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX
INDEX=https://pypi.org/simple

tools_venv="$(mktemp -d)"
trap 'rm -rf "$tools_venv"' EXIT
"$PYTHON" -m venv "$tools_venv"
"$tools_venv/bin/pip" install -q --index-url "$INDEX" pip-tools==7.6.2

compile() {
  CUSTOM_COMPILE_COMMAND="tools/lock_requirements.sh" \
  "$tools_venv/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
    --index-url "$INDEX" --rebuild \
    --output-file "$2" "$1"
}
compile requirements.txt requirements.lock
compile requirements-dev.txt requirements-dev.lock
compile policy/requirements.txt policy/requirements.lock
echo "wrote requirements.lock requirements-dev.lock policy/requirements.lock"
