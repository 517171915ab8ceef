#!/usr/bin/env bash
# A single-node Ray head on this machine: dashboard and job server on 127.0.0.1 (Train tab enabled), token
# authentication on (the token is created in ~/.ray/auth_token if there is none), its own Ray folder
# (/tmp/ray-local-head-UID-PORT) and its own process group, so that stopping it stops nothing else.
#   bash cluster/local-head.sh [ray start options]   # start; returns once the head accepts jobs
#   bash cluster/local-head.sh stop [PORT]           # stop this head only (`ray stop` would stop every Ray of yours);
#                                                    # PORT (its GCS port) when several heads of yours run
#   then: hybrid-ray train --address 127.0.0.1:6379 ...   or   hybrid-ray submit --address http://127.0.0.1:8265 -- train ...
# Ports: LOCAL_HEAD_PORT (GCS, default 6379), LOCAL_HEAD_DASHBOARD_PORT (8265), LOCAL_HEAD_CLIENT_PORT (Ray client
# server, 10001). One given is used or refused; a default that is taken (a second head, a Ray of your own) is replaced
# by a free port, and the script says which. It prints the addresses to use.
# Jobs run `python` from the PATH this script runs with: start it with the project's virtualenv active.
set -euo pipefail
PREFIX="/tmp/ray-local-head-$(id -u)"

alive() {  # those of the given pids that are running processes (a zombie, which a container's init may never reap, is not)
  local pid state
  for pid in "$@"; do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    if [[ -n "$state" && "$state" != Z ]]; then echo "$pid"; fi
  done
}

descendants() {  # the given pids and all their children, depth first
  local pid
  for pid in "$@"; do
    echo "$pid"
    descendants $(pgrep -P "$pid" || true)
  done
}

head_pids() {  # every process of the head whose folder is $1: its process group (Ray's processes only), the processes
  # naming its folder (gcs, raylet, dashboard), their children (agents, workers, job drivers), and its Ray client
  # server (started by `ray start`, it names neither the folder nor a parent of the head; it names the GCS port)
  local dir="$1" port="$2" group pid roots=()
  group=$(cat "$dir/local-head.pgid" 2>/dev/null || true)
  if [[ -n "$group" ]]; then
    for pid in $(pgrep -u "$(id -u)" -g "$group" || true); do
      if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q ray; then roots+=("$pid"); fi
    done
  fi
  roots+=($(pgrep -u "$(id -u)" -f -- "$dir(/| |$)" || true))
  roots+=($(pgrep -u "$(id -u)" -f -- "ray\.util\.client\.server --address=[^ ]*:$port( |$)" || true))
  if (( ${#roots[@]} )); then alive $(descendants "${roots[@]}" | sort -u); fi
}

port_free() {  # whether nothing listens on port $1, of 127.0.0.1 or any address (Ray binds some ports to every
  # interface); connections of a stopped head that linger in TIME_WAIT do not count (Ray binds with SO_REUSEADDR too)
  python - "$1" <<'PY'
import socket, sys
for host in ("127.0.0.1", "0.0.0.0"):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(sys.argv[1])))
        except OSError:
            sys.exit(1)
PY
}

free_port() {
  python -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pick_port() {  # $1: what it is, $2: the variable that sets it, $3: the default
  local given="${!2:-}"
  if [[ -n "$given" ]]; then
    if ! port_free "$given"; then echo "error: $2=$given: port $given is in use" >&2; exit 1; fi
    echo "$given"
  elif port_free "$3"; then
    echo "$3"
  else
    local port
    port=$(free_port)
    echo "port $3 ($1) is in use (another head, or a Ray of yours): using $port ($2 sets it)" >&2
    echo "$port"
  fi
}

stop_head() {  # end every process of the head whose folder is $1 and GCS port $2 (TERM, then KILL), remove the folder
  local pids
  pids=$(head_pids "$1" "$2")
  if [[ -n "$pids" ]]; then
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do [[ -z "$(alive $pids)" ]] && break; sleep 0.5; done
    kill -KILL $(alive $pids) 2>/dev/null || true
    for _ in $(seq 20); do [[ -z "$(alive $pids)" ]] && break; sleep 0.25; done
  fi
  rm -rf "$1"
}

if [[ "${1:-}" == stop ]]; then
  if [[ -n "${2:-}" ]]; then
    heads=("$PREFIX-$2")
    [[ -d "${heads[0]}" ]] || { echo "no local head of port $2 (no $PREFIX-$2)"; exit 0; }
  else
    heads=()
    for dir in "$PREFIX"-*; do
      if [[ -d "$dir" && -n "$(head_pids "$dir" "${dir##*-}")" ]]; then heads+=("$dir"); fi
    done
    if (( ${#heads[@]} == 0 )); then echo "no local head running (from $PREFIX-PORT)"; exit 0; fi
    if (( ${#heads[@]} > 1 )); then
      echo "error: ${#heads[@]} local heads run (GCS ports ${heads[*]##*-}): say which, e.g. \`bash $0 stop ${heads[0]##*-}\`" >&2
      exit 2
    fi
  fi
  dir="${heads[0]}" port="${heads[0]##*-}"
  if [[ -z "$(head_pids "$dir" "$port")" ]]; then echo "no local head running (from $dir)"; rm -rf "$dir"; exit 0; fi
  stop_head "$dir" "$port"
  echo "stopped the local head of port $port ($dir)"
  exit 0
fi

test -n "${RAY_AUTH_TOKEN:-}" || test -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" || ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token RAY_TRAIN_ENABLE_STATE_TRACKING=1

start_head() {  # one `ray start` on the ports picked now; returns 3 when a port was taken between the pick and Ray's
  # bind (another Ray starting at that moment: Ray then logs "already occupied", starts the head without that server,
  # and a probe of the port would reach the other Ray's dashboard), after stopping what it started
  PORT=$(pick_port "GCS" LOCAL_HEAD_PORT "$1") || exit 1
  DASHBOARD_PORT=$(pick_port "dashboard" LOCAL_HEAD_DASHBOARD_PORT "$2") || exit 1
  CLIENT_PORT=$(pick_port "Ray client server" LOCAL_HEAD_CLIENT_PORT "$3") || exit 1
  TEMP_DIR="$PREFIX-$PORT"
  DASHBOARD="http://127.0.0.1:$DASHBOARD_PORT"
  if [[ -n "$(head_pids "$TEMP_DIR" "$PORT")" ]]; then
    echo "error: a local head of port $PORT still runs from $TEMP_DIR; \`bash $0 stop $PORT\` stops it" >&2
    exit 1
  fi
  rm -rf "$TEMP_DIR"
  mkdir -p "$TEMP_DIR"
  # the agents' ports are fixed by default (52365, ...): with another Ray on this machine (a test, a sweep's own Ray)
  # the head would have no job agent, so take free ones
  read -r AGENT_HTTP AGENT_GRPC RUNTIME_ENV_AGENT METRICS < <(python -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
  # in a session (and process group) of its own, which every process of the head inherits: `stop` ends that group,
  # including the Ray client server, whose command line names neither the head's folder nor a parent in it
  setsid ray start --head --node-ip-address=127.0.0.1 --port="$PORT" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port="$CLIENT_PORT" --temp-dir="$TEMP_DIR" \
    --dashboard-agent-listen-port="$AGENT_HTTP" --dashboard-agent-grpc-port="$AGENT_GRPC" \
    --runtime-env-agent-port="$RUNTIME_ENV_AGENT" --metrics-export-port="$METRICS" "${@:4}" > "$TEMP_DIR.start.log" 2>&1 &
  echo $! > "$TEMP_DIR/local-head.pgid"  # no job control in a script: setsid needs no fork, so its pid is the group's
  local started=0
  wait $! || started=$?
  cat "$TEMP_DIR.start.log"
  if grep -q "already occupied" "$TEMP_DIR.start.log"; then started=3; fi
  rm -f "$TEMP_DIR.start.log"
  if (( started )); then
    stop_head "$TEMP_DIR" "$PORT"  # what a failed start left running (a raylet that timed out leaves the GCS up)
  fi
  return "$started"
}

# a port taken in the moment between the pick and Ray's bind: pick again, from free ports (a given one is refused)
defaults=(6379 8265 10001)
for attempt in 1 2 3; do
  status=0
  start_head "${defaults[@]}" "$@" || status=$?
  if (( status == 0 )); then break; fi
  if (( status != 3 )); then echo "error: ray start failed (above); what it started is stopped" >&2; exit 1; fi
  if [[ -n "${LOCAL_HEAD_PORT:-}${LOCAL_HEAD_DASHBOARD_PORT:-}${LOCAL_HEAD_CLIENT_PORT:-}" || $attempt == 3 ]]; then
    echo "error: a port of this head was taken while Ray started (above); what it started is stopped" >&2
    exit 1
  fi
  echo "a port was taken while Ray started (another Ray starting): trying again on free ports" >&2
  read -r -a defaults < <(python -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
done

# The job server's agent starts seconds after the dashboard answers: submit a no-op job until one is accepted
# (then delete it), so that a `hybrid-ray submit` right after this script does not meet "No available agent".
echo "waiting for the head to accept jobs..."
if ! python - "$DASHBOARD" "$TEMP_DIR" <<'PY'
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
then
  stop_head "$TEMP_DIR" "$PORT"  # a head that accepts no jobs is no head to leave running
  echo "error: the head accepts no jobs (above); what it started is stopped" >&2
  exit 1
fi
echo "train/sweep: --address 127.0.0.1:$PORT   submit/jobs: --address $DASHBOARD   Ray client server: port $CLIENT_PORT"
echo "stop it: bash $0 stop $PORT"
