#!/usr/bin/env bash
# A single-node Ray head on this machine: dashboard and job server on 127.0.0.1:8265 (Train tab enabled), token
# authentication on (the token is created in ~/.ray/auth_token if there is none), its own Ray folder
# (/tmp/ray-local-head-UID), so that stopping it stops nothing else.
#   bash cluster/local-head.sh [ray start options]   # start; returns once the head accepts jobs
#   bash cluster/local-head.sh stop                  # stop this head only (`ray stop` would stop every Ray of yours)
#   then: hybrid-ray train --address 127.0.0.1:6379 ...   or   hybrid-ray submit --address http://127.0.0.1:8265 -- train ...
# Jobs run `python` from the PATH this script runs with: start it with the project's virtualenv active.
set -euo pipefail
TEMP_DIR="/tmp/ray-local-head-$(id -u)"
DASHBOARD="http://127.0.0.1:8265"

descendants() {  # the given pids and all their children, depth first
  local pid
  for pid in "$@"; do
    echo "$pid"
    descendants $(pgrep -P "$pid" || true)
  done
}

if [[ "${1:-}" == stop ]]; then
  # the head's own processes name its folder; Ray's agents and workers are their children
  pids=$(descendants $(pgrep -u "$(id -u)" -f -- "$TEMP_DIR(/| |$)" || true) | sort -u)
  if [[ -z "$pids" ]]; then echo "no local head running (from $TEMP_DIR)"; exit 0; fi
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 20); do kill -0 $pids 2>/dev/null || break; sleep 0.5; done
  kill -KILL $pids 2>/dev/null || true
  echo "stopped the local head ($TEMP_DIR)"
  exit 0
fi

test -n "${RAY_AUTH_TOKEN:-}" || test -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" || ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token RAY_TRAIN_ENABLE_STATE_TRACKING=1
# the agents' ports are fixed by default (52365, ...): with another Ray on this machine (a test, a sweep's own Ray) the
# head would have no job agent, so take free ones
read -r AGENT_HTTP AGENT_GRPC RUNTIME_ENV_AGENT METRICS < <(python -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
ray start --head --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 --dashboard-port=8265 \
  --temp-dir="$TEMP_DIR" --dashboard-agent-listen-port="$AGENT_HTTP" --dashboard-agent-grpc-port="$AGENT_GRPC" \
  --runtime-env-agent-port="$RUNTIME_ENV_AGENT" --metrics-export-port="$METRICS" "$@"

# The job server's agent starts seconds after the dashboard answers: submit a no-op job until one is accepted
# (then delete it), so that a `hybrid-ray submit` right after this script does not meet "No available agent".
echo "waiting for the head to accept jobs..."
python - "$DASHBOARD" "$TEMP_DIR" <<'PY'
import sys
import time

from ray.job_submission import JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
deadline = time.time() + 120
while True:
    try:
        job = client.submit_job(entrypoint="true", metadata={"local-head.sh": "readiness probe"})
        break
    except Exception as e:
        if "No available agent" not in str(e) or time.time() > deadline:
            sys.exit(f"error: the head at {sys.argv[1]} accepts no jobs: {str(e).strip().splitlines()[0]} (see "
                     f"{sys.argv[2]}/session_latest/logs/dashboard_agent.log)")
        time.sleep(1)
while not client.get_job_status(job).is_terminal():
    time.sleep(0.5)
client.delete_job(job)
print(f"the head accepts jobs at {sys.argv[1]}")
PY
