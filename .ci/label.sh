#!/usr/bin/env bash
# MONAI Label integration check, run by .ci/run after the core tests (its own ~8 GB environment).
#   bash .ci/label.sh
# 1. builds .venv-label from requirements-label.txt (monailabel needs torchvision, numpy<2 ...: its own venv, so
#    the core venv keeps its pins) and makes this repository importable there;
# 2. trains a tiny mdm_glas model on the built-in demo data into a standalone copy of the bundle
#    (python -m mdm_med.bundle export), run from outside the repository;
# 3. runs tests/test_monailabel.py: the stock MONAI Label server + stock monaibundle app on 127.0.0.1, stopped by the
#    test itself. Everything it writes outside the venv goes to a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${MDM_LABEL_VENV:-$REPO/.venv-label}
PY=$VENV/bin/python
t0=$(date +%s)
stamp() { echo "[label.sh] $(( $(date +%s) - t0 )) s: $*"; }

if [ ! -x "$PY" ]; then
  stamp "creating $VENV"
  python3 -m venv "$VENV"
fi
"$PY" -m pip install -q -r requirements-label.txt
if [ -f pyproject.toml ] || [ -f setup.py ]; then
  "$PY" -m pip install -q --no-deps -e .
else
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$REPO" > "$site/mdm_med_repo.pth"
fi
"$PY" -c "import monailabel, mdm_med, torchvision; print('monailabel', monailabel.__version__)"
stamp "label environment ready"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# a standalone copy (the shared recipe's macros resolved), as the model zoo or another machine would get it
"$PY" -m mdm_med.bundle export --bundle bundles/mdm_glas --out "$work/mdm_glas"
rm -rf "$work/mdm_glas/models"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
(cd "$work" && "$PY" -m monai.bundle run --config_file "$work/mdm_glas/configs/train.json" \
  --bundle_root "$work/mdm_glas" --pretrain_iterations 20 --max_epochs 1 --epoch_length 5 > "$work/train.log" 2>&1) \
  || { tail -40 "$work/train.log"; exit 1; }
test -f "$work/mdm_glas/models/model.pt" && test -f "$work/mdm_glas/models/model_settings.json"
stamp "tiny model trained into $work/mdm_glas"

MDM_LABEL_BUNDLE="$work/mdm_glas" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_monailabel.py
stamp "done"
