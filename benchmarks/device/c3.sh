. benchmarks/device/common.sh; R=/tmp/res/c3; mkdir -p $R; T=${T:-470}
sweep() { timeout -s INT -k 20 $1 python3 -m hybrid_ray sweep $S --seeds 3 --scheduler fifo --name layout-$2 "${@:3}" >> $R/sweep-$2.log 2>&1; echo "$2 rc=$? $(date +%T)" >> $R/head.txt; }
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1); echo "gpu MiB $mem start $(date +%T)" >> $R/head.txt
if [ "$mem" -gt 100000 ]; then  # both layouts at once (6 trials of ~16 GB): equal progress if the call is cut
  sweep $T 24x128 --grid model.num_heads=24 --head-dim 128 & sleep 25; sweep $((T-25)) 12x256 --grid model.num_heads=12 & wait
else
  sweep $((T/2)) 24x128 --grid model.num_heads=24 --head-dim 128; sweep $((T/2)) 12x256 --grid model.num_heads=12
fi
timeout 30 python3 -m hybrid_ray compare /tmp/layout/layout-24x128 /tmp/layout/layout-12x256 --out $R/compare > $R/compare.txt 2>&1
for s in 24x128 12x256; do cp /tmp/layout/layout-$s/sweep.json $R/sweep-$s.json 2>/dev/null; done; df -h /tmp >> $R/head.txt; pack c3
tail -8 $R/sweep-24x128.log; tail -8 $R/sweep-12x256.log; tail -15 $R/compare.txt; cat $R/head.txt
