. benchmarks/device/common.sh; R=/tmp/res/c1; mkdir -p $R
{ git log --oneline -1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date; } > $R/head.txt
timeout 110 python3 -m benchmarks.bench_dqkwg --budget-s 55 --out-dir $R > $R/dqkwg.log 2>&1; echo "dqkwg rc=$? $(date +%T)" >> $R/head.txt
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider > $R/gpu-tests.log 2>&1; echo "gpu-tests rc=$? $(date +%T)" >> $R/head.txt
pack c1
tail -20 $R/dqkwg.log; tail -24 $R/gpu-tests.log; cat $R/head.txt
