# Issue #47 on one warm H100 (after `. .devbundle/env.sh &&`): eval's ARC-Easy scoring speed with `--backend auto`
# (which builds the pure-PyTorch twin on every device since #47: no FLA import) against FLA's kernels, the H100-base
# pure DeltaNet, 1000 synthetic questions (the hub is out of reach), each backend in its own process. ~3 minutes.
. benchmarks/device/common.sh; R=/tmp/res/c6; mkdir -p $R
for b in auto fla; do
  timeout 150 python3 -m benchmarks.bench_generate --out-dir $R/$b --variants h100_deltanet --batches \
    --command-variant none --eval-questions 1000 --eval-backend $b --part-s 60 > $R/$b.log 2>&1
  echo "$b rc=$? $(date +%T)" >> $R/head.txt
done
pack c6
python3 - $R <<'PY'
import json, sys
from pathlib import Path
for b in ("auto", "fla"):
    try:
        e = json.loads(next(Path(sys.argv[1], b).glob("generate-*.json")).read_text())["eval"]["h100_deltanet"]
        print(f"{b:<5} {e['questions']} questions in {e['seconds']:.2f} s ({e['examples_per_s']:.0f}/s), acc {e['acc']:.4f}")
    except (StopIteration, KeyError, OSError, ValueError) as err:
        print(f"{b:<5} no result: {err!r}")
PY
cat $R/head.txt
