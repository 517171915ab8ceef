# Issue #49 on one warm H100 (after `. .devbundle/env.sh &&`; the first call carries .devcache's kernel cache): the
# 13-arm H100-base ratio study with --tune-lr at a reduced budget, as a user types it (byte tokenizer, default corpus,
# parameter-matched arms, 16 x 1024 a step so three trials share the GPU): stage 1 at 40 steps x 3 LRs under ASHA,
# stage 2 at 80 steps x 2 seeds. It takes more than one 10-minute call: the study is stopped with Ctrl-C (SIGINT) before
# the call's end and the next call runs this same script, which resumes it (an honest Ctrl-C and relaunch on a GPU).
# Each call appends to /tmp/res/c5 (head.txt, study-N.log) and packs what the study wrote so far.
. benchmarks/device/common.sh; R=/tmp/res/c5; mkdir -p $R; T=${T:-520}
ls .devcache/kernels-*.tar.xz >/dev/null 2>&1 && [ ! -f /tmp/hrcache/.imported ] && \
  python3 -m hybrid_ray kernels import .devcache/kernels-*.tar.xz > $R/kernels.log 2>&1 && touch /tmp/hrcache/.imported
N=$(ls $R/study-*.log 2>/dev/null | wc -l); N=$((N + 1))
STUDY="--grid attention_ratio --tune-lr --seeds 2 --match-params --variant h100_deltanet --steps 80 --tune-steps 40
  --warmup-steps 10 --eval-every 10 --checkpoint-every 1000 --batch-size 16 --lr-grid 5e-4,1e-3,2e-3
  --storage-path /tmp/study --name ratio-study"
[ $N = 1 ] && { { git log --oneline -1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; df -h /tmp; } > $R/head.txt
  timeout 60 python3 -m hybrid_ray sweep $STUDY --dry-run > $R/dry-run.txt 2>&1; }
echo "launch $N start $(date +%T)" >> $R/head.txt
timeout -s INT -k 30 $T python3 -m hybrid_ray sweep $STUDY > $R/study-$N.log 2>&1; echo "launch $N rc=$? $(date +%T)" >> $R/head.txt
df -h /tmp | tail -1 >> $R/head.txt; du -sh /tmp/study >> $R/head.txt 2>&1
mkdir -p $R/study; (cd /tmp/study/ratio-study && cp -r --parents study.json lr_choices.jsonl stage_seconds.jsonl report.md \
  study.png lr/sweep.json lr/sweep.png lr/asha_decisions.jsonl lr-extend/sweep.json compare/sweep.json compare/sweep.png \
  $R/study/ 2>/dev/null); pack c5
tail -25 $R/study-$N.log; cat $R/head.txt
