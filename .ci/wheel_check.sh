#!/usr/bin/env bash
# --- wheel install (issue 20) ---
# The main job from a BUILT WHEEL in a fresh venv, run from a folder outside the checkout (so nothing
# is imported from the source tree): `medadapt --help` lists the commands, `medadapt config init`
# writes a config, `medadapt train` runs the shipped demo config briefly, and a bad run prints one
# `error:` line and exits 2. Adds ~4.5 min to .ci/run (4m22s measured: torch CPU + deps install, ~40 s of training).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
rm -rf .venv-wheel dist-ci
python3 -m venv .venv-wheel
. .venv-wheel/bin/activate
pip install -q torch==2.13.0
pip wheel -q --no-deps . -w dist-ci
pip install -q dist-ci/medadapt-*.whl
WORK=$(mktemp -d)
cd "$WORK"
python - <<'PY'
import pathlib, medadapt
root = pathlib.Path(medadapt.__file__).parent
assert "site-packages" in str(root), f"medadapt imported from {root}, not from the installed wheel"
for shipped in ("py.typed", "configs/demo.yaml", "configs/synthetic.yaml", "demo/medical_demo.npz", "hub_cards/medadapt_card.md", "federated/app/pyproject.toml"):
    assert (root / shipped).is_file(), f"the wheel lacks medadapt/{shipped}"
print("wheel contents ok:", root)
PY
medadapt --help > help.txt
for command in show recover train config export demo; do
  grep -Eq "^    $command " help.txt || { cat help.txt; echo "medadapt --help does not list '$command'"; exit 1; }
done
medadapt config init run.yaml --from demo
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
medadapt train --config run.yaml -q compare_naive=false train.epochs=1 train.max_steps_per_stage=3 output_dir=out
test -f out/results.json && test -f out/manifest.json
set +e
medadapt train --config run.yaml train.epochz=1 2> err.txt
status=$?
set -e
cat err.txt
[ "$status" = 2 ] || { echo "a bad run exited $status, not 2"; exit 1; }
[ "$(grep -c . err.txt)" = 1 ] && grep -q "^error: unknown config key" err.txt || { echo "a bad run printed more than medadapt's one error line"; exit 1; }
cd "$REPO"
rm -rf "$WORK"
deactivate
echo "wheel install: ok"
# --- end wheel install ---
