#!/usr/bin/env bash
# Start a single-node Ray head on this machine with the dashboard (and its Train tab) on 127.0.0.1:8265.
#   cluster/local-head.sh            # start;   ray stop   # stop
#   then: RAY_ADDRESS=127.0.0.1:6379 hybrid-ray train ...   or   ray job submit --address http://127.0.0.1:8265 ...
set -euo pipefail
export RAY_TRAIN_ENABLE_STATE_TRACKING=1
exec ray start --head --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 --dashboard-port=8265 "$@"
