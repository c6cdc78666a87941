#!/usr/bin/env bash
# The install users get: `pip install .` with no extras, in a fresh venv, must run the default path the README
# documents and measures: predict on a CPU through ONNX Runtime in fp32 (predict.backend=auto). CI's `.[dev]` install
# once hid that a plain install lacked `onnx` and fell back to PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q .
cd "$work"  # away from the checkout: the installed package, its own conf/ and model
export NUCLEISEG_CACHE="$work/cache"
venv/bin/nucleiseg data synthetic --to tiles --count 1 --size 256 >/dev/null
venv/bin/nucleiseg predict tiles/images --out nuclei --mpp 0.5 --quiet
backend=$(venv/bin/python -c "import json, glob; print(json.load(open(glob.glob('nuclei/*/done.json')[0]))['settings']['backend'])")
echo "plain install: predict ran with backend=$backend"
if [ "$backend" != "onnxruntime" ]; then
  echo "plain install: expected the documented default backend onnxruntime, got $backend" >&2
  exit 1
fi
