#!/usr/bin/env bash
# Create .venv and install SegAudit with its extras.
#
# On a machine whose python3 already has torch (a GPU box with its own CUDA build), the
# venv sees the system site-packages and constraints.txt is not applied, so that torch is
# kept.  Elsewhere torch and torchvision are installed at the versions pinned there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "setup: $PYTHON already has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'); keeping it"
  venv_flags=(--system-site-packages)
  constraints=()
else
  venv_flags=()
  constraints=(-c constraints.txt)
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "${venv_flags[@]}" "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# build-constraints.txt caps setuptools for building sdists (visdom, needed by adv-lib,
# does not build on setuptools>=81); --build-constraint needs pip>=25.3, hence the upgrade.
"$VENV/bin/python" -m pip install --quiet --build-constraint build-constraints.txt \
  "${constraints[@]}" -e '.[attacks,dev,train,advlib,lipnets,reference]'
"$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, 'ready in $VENV')"
