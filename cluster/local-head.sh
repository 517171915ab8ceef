#!/usr/bin/env bash
# Start a single-node Ray head on this machine: dashboard and job server on 127.0.0.1:8265 (Train tab enabled),
# token authentication on (the token is created in ~/.ray/auth_token if there is none).
#   bash cluster/local-head.sh        # start;   ray stop   # stop it (this stops every Ray of this user)
#   then: hybrid-ray train --address 127.0.0.1:6379 ...   or   hybrid-ray submit --address http://127.0.0.1:8265 -- train ...
set -euo pipefail
test -n "${RAY_AUTH_TOKEN:-}" || test -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" || ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token RAY_TRAIN_ENABLE_STATE_TRACKING=1
exec ray start --head --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 --dashboard-port=8265 "$@"
