# Issue #47 on one warm H100 (after `. .devbundle/env.sh &&`, carrying .devbundle and the kernel cache): generate and
# eval start in seconds. bench_generate times `hybrid-ray generate` (2 runs) and `eval` of one question, each in a new
# process, on the H100-base pure DeltaNet with the byte tokenizer and with a GPT-2-style tokenizer folder (50257 ids,
# trained offline on the standard library: the hub is unreachable here); then every GPU test (`pytest -m gpu`).
# Targets: load_s <= 3 s, first token and first question <= 6 s from the command's start. About 4-6 minutes; each
# step has its own timeout (9 minutes at the worst).
. benchmarks/device/common.sh; R=/tmp/res/c4; mkdir -p $R
{ git log --oneline -1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date; } > $R/head.txt
# the tokenizer: .devcache/gpt2-style-50257 when carried (make it on a CPU first: python -c "from benchmarks.common
# import gpt2_style_tokenizer as g; g('.devcache/gpt2-style-50257')", 1-2 min), else trained here into /tmp once
T=.devcache/gpt2-style-50257; [ -f $T/tokenizer_config.json ] || T=/tmp/hybrid-ray-gpt2-style-50257
timeout 120 python3 -c "from benchmarks.common import gpt2_style_tokenizer; gpt2_style_tokenizer('$T')" > $R/tokenizer.log 2>&1
echo "gpt2-style tokenizer rc=$? $(date +%T)" >> $R/head.txt
timeout 160 python3 -m benchmarks.bench_generate --out-dir $R --only-commands --command-runs 2 --command-tokens 200 \
  --deadline-s 140 --gpt2-tokenizer $T > $R/bench.log 2>&1; echo "bench_generate rc=$? $(date +%T)" >> $R/head.txt
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests > $R/gpu-tests.log 2>&1; echo "gpu-tests rc=$? $(date +%T)" >> $R/head.txt
pack c4
python3 - $R/generate-cuda-h100.json <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no bench JSON: {e}")
print(f"{'tokenizer':<10} {'imports':>8} {'tokenizer':>9} {'load_s':>7} {'ready':>7} {'1st token':>9} {'1st question':>12}")
for name, e in report.get("startup", {}).items():
    phases = (e.get("runs") or [{}])[-1].get("startup", {})
    cell = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"
    print(f"{name:<10} {cell(phases.get('imports')):>8} {cell(phases.get('tokenizer')):>9} {cell(e.get('load_s')):>7} "
          f"{cell(e.get('model_ready_from_start_s')):>7} {cell(e.get('first_token_from_start_s')):>9} "
          f"{cell(e.get('first_question_from_start_s')):>12}")
print("targets: load_s <= 3, first token <= 6, first question <= 6 (seconds from the command's start)")
print("skipped:", report.get("skipped_for_deadline"))
PY
tail -3 $R/gpu-tests.log; cat $R/head.txt
