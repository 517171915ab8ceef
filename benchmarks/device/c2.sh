. benchmarks/device/common.sh; R=/tmp/res/c2; mkdir -p $R
python3 -m hybrid_ray kernels import .devcache/kernels-*.tar.xz > $R/import.log 2>&1; echo "import rc=$? $(date +%T)" > $R/head.txt
timeout 170 python3 -m benchmarks.bench_speed --out-dir $R --variants h100_transformer --launch fsdp fsdp+noreshard+shardlocal --settings fsdp fsdp+noreshard+shardlocal fsdp fsdp+noreshard+shardlocal fsdp+noreshard fsdp+shardlocal --steps 30 > $R/ab-transformer.log 2>&1; echo "ab-t rc=$? $(date +%T)" >> $R/head.txt
timeout 110 python3 -m benchmarks.bench_speed --out-dir $R --variants h100_deltanet h100_hybrid_sparse --settings fsdp fsdp+noreshard+shardlocal --steps 10 > $R/ab-gdn.log 2>&1; echo "ab-gdn rc=$? $(date +%T)" >> $R/head.txt
timeout 240 python3 -m hybrid_ray warmup $S --grid model.num_heads=24 --head-dim 128 > $R/warmup-24x128.log 2>&1; echo "warmup rc=$? $(date +%T)" >> $R/head.txt
pack c2
cut -c1-300 $R/speed.jsonl; tail -5 $R/warmup-24x128.log; cat $R/head.txt
