export HYBRID_RAY_CACHE=/tmp/hrcache HF_HUB_OFFLINE=1
S="--variant h100_deltanet --steps 1000 --batch-size 8 --vocab-size 50304 --eval-every 250 --checkpoint-every 500 --storage-path /tmp/layout"
pack() { tar czf $OUT/$1.tgz -C /tmp/res $1; }
