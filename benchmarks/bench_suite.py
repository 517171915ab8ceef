"""CPU: where the test suite's time goes, by kind of process (issue #22 wants it under 10 minutes on 2 cores).

    python benchmarks/bench_suite.py --out-dir benchmarks/results/suite [-- COMMAND...]

Runs COMMAND [default: `python -m pytest -q`, the README's test command; `bash .ci/run` in a fresh clone measures
CI] and samples the CPU time of every process that starts meanwhile every half second; a process counts under the
kind its newest command line names: Ray's actor title (`ray::RayTrainWorker`), a Ray system process (raylet,
gcs_server, dashboard, ...), `hybrid-ray`, the pytest processes. Short-lived processes can be missed between two
samples, so the kinds add up to a little less than the machine's busy CPU (from /proc/stat), which suite.json records
beside the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Ray's system processes, by a part of their command line (Ray renames a worker when it takes an actor)
SYSTEM = ("gcs_server", "dashboard/dashboard.py", "dashboard/agent.py", "runtime_env/agent", "log_monitor",
          "monitor.py", "ray.util.client.server", "default_worker.py", "ray start", "hybrid-ray",
          "hybrid_ray.jobs.fla_clone", "pytest", "from multiprocessing")
XDIST_WORKER = "exec(eval(sys.stdin.readline()))"  # how pytest-xdist (execnet) starts a test process


def kind_of(cmdline: list[str]) -> str:
    """A short name for what a process is."""
    line = " ".join(cmdline)
    if line.startswith("ray::"):  # ray::RayTrainWorker, also while it runs a method (ray::RayTrainWorker.poll_status)
        return line.split()[0].split("(")[0].split(".")[0]
    if line.startswith("ray-dashboard-"):
        return line.split()[0]
    if XDIST_WORKER in line:
        return "pytest-xdist worker"
    if cmdline and cmdline[0].endswith("/raylet"):
        return "raylet"
    return next((key for key in SYSTEM if key in line), line[:60])


def busy_cpu_seconds() -> float:
    """The machine's busy CPU time so far (user, nice, system, irq, softirq), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / 100


def measure(command: list[str], interval: float = 0.5) -> dict:
    """Run `command` to its end; CPU-seconds per kind of process that started meanwhile."""
    before = {p.pid for p in psutil.process_iter()}
    busy, started = busy_cpu_seconds(), time.time()
    proc = subprocess.Popen(command)
    cpu: dict[int, float] = {}
    kind: dict[int, str] = {}
    while proc.poll() is None:
        for p in psutil.process_iter():
            if p.pid in before:
                continue
            try:
                times = p.cpu_times()
                cmdline = p.cmdline()
            except psutil.Error:
                continue
            if cmdline:  # empty once the process has exited: keep what it was
                kind[p.pid] = kind_of(cmdline)
            kind.setdefault(p.pid, "?")
            cpu[p.pid] = times.user + times.system
        time.sleep(interval)
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for pid, seconds in cpu.items():
        totals[kind[pid]] += seconds
        counts[kind[pid]] += 1
    return {
        "command": command, "returncode": proc.returncode, "wall_seconds": round(time.time() - started, 1),
        "busy_cpu_seconds": round(busy_cpu_seconds() - busy, 1), "cpus": psutil.cpu_count(),
        "sampled_cpu_seconds": round(sum(totals.values()), 1),
        "by_kind": [{"kind": k, "cpu_seconds": round(v, 1), "processes": counts[k]} for k, v in totals.most_common()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="Folder for suite.json.")
    parser.add_argument("command", nargs="*", help="The command to measure (after --). [default: python -m pytest -q]")
    args = parser.parse_args(argv)
    try:
        result = measure(args.command or [sys.executable, "-m", "pytest", "-q"])
    except OSError as e:  # the command does not exist or cannot run
        print(f"error: cannot run {args.command[0]}: {e.strerror}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wall {result['wall_seconds']} s, busy {result['busy_cpu_seconds']} CPU-s on {result['cpus']} CPUs")
    for row in result["by_kind"][:20]:
        print(f"{row['cpu_seconds']:8.1f} CPU-s {row['processes']:4} x {row['kind']}")
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
