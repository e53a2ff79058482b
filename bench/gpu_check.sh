#!/usr/bin/env bash
# What only a GPU can show, in one run (under 8 minutes on one H100/H200), summarised in
# ${OUT:-bench/out/gpu_check}/summary.txt. On a machine without CUDA it runs its CPU-safe parts
# (kernel tests in the Triton interpreter, the verify-cost curve, greedy equality on 2 prompts) and
# says which parts it skipped.
#   bash bench/gpu_check.sh
# PARTS picks what runs (default all): kernels (tests, timings), model (verify-cost, greedy equality;
# needs the demo model), train (QLoRA and FSDP steps), so a short device lease can split the check.
set -uo pipefail
parts=" ${PARTS:-kernels model train} "
want() { [[ $parts == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
out="${OUT:-bench/out/gpu_check}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
note() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, record its status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  note "[$name] exit $rc in $((SECONDS - start)) s ($out/$name.log)"
  tail -n 25 "$out/$name.log" >> "$summary"
}
# Training outputs stay out of $out: a device lease brings back only a few files.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# TRAIN_DATA replaces the recipes' self-distilled data (a fresh machine has none yet).
data=()
[ -n "${TRAIN_DATA:-}" ] && data=("data.sources.0.path=$TRAIN_DATA")
# TUNE_PROMPTS: where the baselines are tuned when demo:sharegpt (120 MB) is not installed.
tune=()
[ -n "${TUNE_PROMPTS:-}" ] && tune=("baselines.tune_prompts=$TUNE_PROMPTS")
note "draftheads GPU check, $(date -u +%FT%TZ), ${gpu:-no CUDA device: CPU-safe parts only}"
if [ -n "$gpu" ]; then
  # Compiled kernels (no interpreter) against the PyTorch references, fp32/fp16/bf16, stated tolerances.
  if want kernels; then
    step kernel-tests 180 env -u TRITON_INTERPRET python -m pytest -q tests/kernels
    for dtype in float32 float16 bfloat16; do
      step "kernels-$dtype" 60 python bench/kernel_speed.py --dtype "$dtype"
    done
  fi
  if want model; then
    # 2 prompts: on the H200 one MT-bench prompt (2 turns x 128 tokens, 5 methods x 3 runs, every
    # token re-scored in 2 dtypes) took 72 s.
    step greedy-equality 240 draftheads eval --heads "${HEADS:-outputs/smollm2-135m-medusa1-distill/heads}" --prompts mt-bench --limit 2 \
      --max-new-tokens 128 --dtype bfloat16 --out "$out/eval.json" "${tune[@]}"
    step verify-cost 90 python bench/verify_cost.py --dtypes bfloat16 --nodes 1 2 4 8 16 32 64 128 --prefix 1024
  fi
  if want train && ! python -c "import bitsandbytes" 2>/dev/null; then
    note "[qlora-step] skipped: bitsandbytes is not installed"
  elif want train; then
    step qlora-step 120 draftheads train recipes/smollm2-135m/medusa2-lora.yaml train.backbone.lora.load_in_bits=4 train.max_steps=2 \
      train.eval_every=100 train.save_every=100 "train.output_dir=$scratch/qlora" train.trackers=[] "${data[@]}"
  fi
  if want train; then
    step fsdp-step 180 draftheads train recipes/smollm2-135m/medusa1-distill.yaml --accelerate-config fsdp train.max_steps=2 \
      train.eval_every=100 train.save_every=100 "train.output_dir=$scratch/fsdp" train.trackers=[] "${data[@]}"
  fi
else
  step kernel-tests 600 env TRITON_INTERPRET=1 python -m pytest -q tests/kernels
  step verify-cost 300 python bench/verify_cost.py --dtypes bfloat16 --nodes 1 2 4 8 16
  step greedy-equality 900 draftheads eval --heads "${HEADS:-outputs/smollm2-135m-medusa1-distill/heads}" --prompts mt-bench --limit 2 \
    --max-new-tokens 48 --out "$out/eval.json"
  note "skipped without a GPU: compiled kernels in fp16/bf16 with timings, QLoRA (4-bit) and FSDP training steps"
fi
if [ -f "$out/eval.json" ]; then
  python -c "import json; r = json.load(open('$out/eval.json')); print({k: r.get(k) for k in ('greedy_mismatches', 'near_ties', 'hf_generate_mismatches', 'tau', 'speedup', 'speedup_vs_hf_generate')})" | tee -a "$summary"
fi
