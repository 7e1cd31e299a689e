#!/usr/bin/env bash
# A virtual environment with fractalshades for bench/deep.py's side-by-side runs:
#   bench/peers/setup_fractalshades.sh [FOLDER]     (default: .venv-fractalshades)
# fractalshades builds against MPFR and MPC (Debian: libmpfr-dev libmpc-dev) and
# needs numpy 2.3, which fractalq's own environment does not have.
set -euo pipefail
folder=${1:-.venv-fractalshades}
python3 -m venv "$folder"
"$folder/bin/pip" install --quiet numpy==2.3.5 fractalshades==1.2.1
echo "$folder/bin/python"
