#!/usr/bin/env bash
# The model zoos the zoo tests build models from (torchvision, timm) and pytorch-grad-cam, beside the
# venv's torch 2.13, in a folder the tests put on sys.path (tests/conftest.py): .zoo by default.
#
# PyPI's torchvision wheels are built for another torch ("operator torchvision::nms does not exist"
# beside 2.13), so torchvision's Python code goes in without its compiled ops: its classification and
# segmentation models build and run; nms and roi ops do not (no test needs them). Everything goes in
# with --no-deps, so nothing replaces the venv's torch or numpy. Idempotent. Usage:
#
#     bash scripts/setup_zoo.sh [VENV] [FOLDER]     # defaults: .venv .zoo (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
DIR=${2:-.zoo}
mkdir -p "$DIR"
"$VENV/bin/pip" install --quiet --no-deps --upgrade --target "$DIR" \
    torchvision==0.29.1 timm==1.0.31 huggingface_hub==2.4.0 safetensors==0.8.0 pyyaml==6.0.4 \
    grad-cam==1.5.7 ttach==0.0.3 opencv-python-headless==5.0.0.93 tqdm scikit-learn scipy threadpoolctl joblib \
    cloudpickle narwhals
rm -f "$DIR"/torchvision/_C*.so
sed -i -E '/^\s*_(meta|autograd)_registrations,\s*$/d; /^\s*from (torchvision|\.) import _(meta|autograd)_registrations/d' \
    "$DIR/torchvision/__init__.py"
PYTHONPATH="$DIR" "$VENV/bin/python" -c 'import torchvision, timm, pytorch_grad_cam; print("zoo:", "torchvision", torchvision.__version__, "timm", timm.__version__)'
