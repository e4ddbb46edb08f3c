#!/usr/bin/env bash
# Setup 2 of benchmarks/sweep_families.py: the families on torch 2.13 (what CI installs).
#
# PyPI's torchvision does not import beside torch 2.13 ("operator torchvision::nms does not exist"),
# so torchvision 0.29.1's Python code goes into a PYTHONPATH folder with its compiled ops removed:
# the models build and run, nms/roi ops do not (detection post-processing is not swept there).
# The other libraries go there with --no-deps, so that nothing replaces the venv's torch.
# Idempotent: run it again to repair the folder. Usage:
#
#     bash benchmarks/setup_sweep_torch213.sh [VENV] [FOLDER]    # defaults: /work/main/.venv /tmp/timmpath
#     PYTHONPATH=/tmp/timmpath /work/main/.venv/bin/python benchmarks/sweep_families.py --quick
set -euo pipefail

VENV=${1:-/work/main/.venv}
DIR=${2:-/tmp/timmpath}
PIP="$VENV/bin/pip"
mkdir -p "$DIR"

"$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.13"), torch.__version__'

# Pinned to what pip resolves for setup 1 (torch 2.14.1 + torchvision 0.29.1), so both setups run the same code.
PACKAGES=(
    torchvision==0.29.1 timm==1.0.31 huggingface_hub==2.4.0 safetensors==0.8.0 pyyaml==6.0.4
    ultralytics==8.4.190 ultralytics-thop==2.2.3 ultralytics-platform==0.1.99 opencv-python-headless==5.0.0.93
    polars==2.1.0 polars-runtime-32==2.1.0 nvidia-ml-py psutil tqdm scipy onnxslim colorama
    transformers==5.24.0 tokenizers==0.23.3 regex typer shellingham pydantic pydantic-core annotated-types
    typing-inspection annotated-doc httpx httpcore h11 anyio idna certifi httpx2 httpcore2 truststore hf-xet
    segmentation-models-pytorch==0.6.0
)
missing=()
for spec in "${PACKAGES[@]}"; do
    name=${spec%%==*}
    dist=$(echo "$name" | tr '-' '_')
    if [ -n "$(ls -d "$DIR"/"$dist"-*.dist-info "$DIR"/"${dist,,}"-*.dist-info 2>/dev/null)" ]; then
        continue
    fi
    missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$PIP" install --quiet --no-deps --upgrade --target "$DIR" "${missing[@]}"
fi

# torchvision without its compiled ops: drop the .so files and the imports that register them.
rm -f "$DIR"/torchvision/_C*.so
sed -i -E '/^\s*_(meta|autograd)_registrations,\s*$/d; /^\s*from (torchvision|\.) import _(meta|autograd)_registrations/d' \
    "$DIR/torchvision/__init__.py"

PYTHONPATH="$DIR" "$VENV/bin/python" - <<'EOF'
import torch, torchvision, timm, transformers, segmentation_models_pytorch, ultralytics
print("torch", torch.__version__, "torchvision", torchvision.__version__, "timm", timm.__version__,
      "transformers", transformers.__version__, "smp", segmentation_models_pytorch.__version__,
      "ultralytics", ultralytics.__version__)
EOF
