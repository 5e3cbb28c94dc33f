#!/usr/bin/env bash
# `make bench-load`: a load benchmark of foundings. It starts the local stack of `make run`
# (scripts/run-stack.sh: release build, on its own ports and its own directory, so it never meets
# a running `make run`) with the compute service's injected latency cleared and per-organization
# limits raised, and drives `POST /clusters` ({"control_plane_count":3}, no name) with oha, an
# HTTP load generator (installed with `cargo install --locked` when missing):
#
#   1. after a warm-up, one client at a time (BENCH_SINGLE foundings);
#   2. BENCH_N foundings at concurrency BENCH_C;
#   3. BENCH_N16 foundings at concurrency BENCH_C16 (16).
#
# For each run it prints latency (p50/p90/p99/max), foundings per second, the answers that were
# not 201 (by status, and transport errors), and the mean time of each founding step during the
# run (from plinth's /metrics histogram plinth_founding_step_duration_seconds). It also measures
# plinth's resident memory idle and at its peak during the last run, the machine's RSA-2048 key
# generation rate on all cores (crates/x509-pki/examples/rsa_keygen_rate.rs, run with the stack
# idle) against which the foundings per second are set, and the time from starting a second plinth
# on the migrated database to its first 200 from /readyz. It ends with a Markdown block for
# docs/BENCHMARKS.md and stops everything it started (on Ctrl-C and errors too).
#
# Knobs (environment), defaults in brackets:
#   BENCH_SINGLE [100]  BENCH_N [400]  BENCH_C [8]  BENCH_N16 [1000]  BENCH_C16 [16]
#   BENCH_WARMUP [5] foundings before the first run
#   BENCH_KEYGEN_SECS [10] how long the key generation rate is measured
#   BENCH_STARTUPS [5] how many times the second plinth is started and timed
#   BENCH_REQUEST_TIMEOUT [120] seconds one request may take (oha -t)
#   BENCH_RUN_TIMEOUT [1800] seconds one run may take before it is stopped
#   BENCH_OHA_VERSION [1.16.0] the oha installed when none is on PATH or in ~/.cargo/bin
#   BENCH_DEV_DIR [.dev/bench-load] the stack's directory (wiped at the start)
#   BENCH_PLINTH_PORT [28080] BENCH_BOOTSTRAP_PORT [28443] BENCH_COMPUTE_PORT [28082]
#   BENCH_PG_PORT [55436] BENCH_PDNS_DNS_PORT [15356] BENCH_PDNS_API_PORT [28083]
#   BENCH_REPLICA_PORT [28090] (and the next port) for the timed second plinth
#   PLINTH__* are passed to plinth as usual; unless set, the benchmark uses
#   PLINTH__LIMITS__MAX_CLUSTERS_PER_ORG=1000000, PLINTH__LIMITS__MAX_FOUNDINGS_IN_FLIGHT_PER_ORG=1000,
#   PLINTH__FOUNDING__MAX_IN_FLIGHT=256 and PLINTH__LOG__LEVEL=info.
#
# A quick smoke run: BENCH_SINGLE=10 BENCH_N=20 BENCH_N16=32 BENCH_KEYGEN_SECS=3 make bench-load
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

single=${BENCH_SINGLE:-100}
n=${BENCH_N:-400}
c=${BENCH_C:-8}
n16=${BENCH_N16:-1000}
c16=${BENCH_C16:-16}
warmup=${BENCH_WARMUP:-5}
keygen_secs=${BENCH_KEYGEN_SECS:-10}
startups=${BENCH_STARTUPS:-5}
request_timeout=${BENCH_REQUEST_TIMEOUT:-120}
run_timeout=${BENCH_RUN_TIMEOUT:-1800}
oha_version=${BENCH_OHA_VERSION:-1.16.0}
replica_port=${BENCH_REPLICA_PORT:-28090}

say() { printf 'bench-load: %s\n' "$*"; }
die() { printf 'bench-load: %s\n' "$*" >&2; exit 1; }

for knob in single n c n16 c16 warmup keygen_secs startups request_timeout run_timeout replica_port; do
  value=${!knob}
  case "$value" in
    '' | *[!0-9]*) die "expected a whole number for $knob, got '$value'" ;;
  esac
done
for knob in single n c n16 c16 startups; do
  [ "${!knob}" -ge 1 ] || die "$knob must be at least 1"
done

# The stack: its own directory and ports, a release build, no compute latency, high limits.
dev=${BENCH_DEV_DIR:-$root/.dev/bench-load}
case "$(realpath -m "$dev")" in
  / | "$root" | "$root/.dev" | "$HOME") die "BENCH_DEV_DIR=$dev would wipe too much" ;;
esac
export PLINTH_DEV_DIR=$dev
export PLINTH_PORT=${BENCH_PLINTH_PORT:-28080} COMPUTE_PORT=${BENCH_COMPUTE_PORT:-28082}
export PLINTH_BOOTSTRAP_PORT=${BENCH_BOOTSTRAP_PORT:-28443} PLINTH_PG_PORT=${BENCH_PG_PORT:-55436}
export PLINTH_PDNS_DNS_PORT=${BENCH_PDNS_DNS_PORT:-15356}
export PLINTH_PDNS_API_PORT=${BENCH_PDNS_API_PORT:-28083}
export PLINTH_PROFILE=release
export PLINTH__LIMITS__MAX_CLUSTERS_PER_ORG=${PLINTH__LIMITS__MAX_CLUSTERS_PER_ORG:-1000000}
export PLINTH__LIMITS__MAX_FOUNDINGS_IN_FLIGHT_PER_ORG=${PLINTH__LIMITS__MAX_FOUNDINGS_IN_FLIGHT_PER_ORG:-1000}
export PLINTH__FOUNDING__MAX_IN_FLIGHT=${PLINTH__FOUNDING__MAX_IN_FLIGHT:-256}
export PLINTH__LOG__LEVEL=${PLINTH__LOG__LEVEL:-info}
plinth_bin=target/release/plinth

# Whether something listens on 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"
if PLINTH_PG_DIR="$dev/pg" scripts/pg.sh status 2>/dev/null; then
  die "a stack from an earlier run still runs in $dev; stop it first (scripts/pg.sh stop with PLINTH_PG_DIR=$dev/pg)"
fi
for port in "$PLINTH_PORT" "$PLINTH_BOOTSTRAP_PORT" "$COMPUTE_PORT" "$PLINTH_PG_PORT" \
  "$PLINTH_PDNS_DNS_PORT" "$PLINTH_PDNS_API_PORT" "$replica_port" "$((replica_port + 1))"; do
  ! port_taken "$port" || die "port $port is taken; choose others with BENCH_*_PORT"
done

# The load generator.
oha=$(command -v oha || true)
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
if [ -z "$oha" ] && [ -x "$cargo_bin/oha" ]; then
  oha=$cargo_bin/oha
fi
if [ -z "$oha" ]; then
  say "installing oha $oha_version into $cargo_bin (once; a few minutes)"
  cargo install --quiet --locked --version "$oha_version" oha
  oha=$cargo_bin/oha
fi
oha_help=$("$oha" --help)
if grep -q -- '--output-format' <<<"$oha_help"; then
  oha_json=(--output-format json)
else
  oha_json=(-j) # older oha
fi
oha_breakdown=()
if grep -q -- '--stats-success-breakdown' <<<"$oha_help"; then
  oha_breakdown=(--stats-success-breakdown)
fi

say "building plinth, the compute service and rsa_keygen_rate (release)"
cargo build --quiet --release --bins -p plinth-api -p plinth-compute-sim
cargo build --quiet --release -p plinth-x509-pki --example rsa_keygen_rate

rm -rf "$dev"
mkdir -p "$dev"
dev=$(cd "$dev" && pwd)
export PLINTH_DEV_DIR=$dev
stack_log=$dev/stack.log

group=
sampler=
oha_pid=
stop_stack() {
  [ -n "$group" ] || return 0
  kill -INT -- "-$group" 2>/dev/null || true
  for _ in $(seq 1 300); do
    if ! pgrep -g "$group" >/dev/null 2>&1; then
      group=
      return 0
    fi
    sleep 0.1
  done
  echo "bench-load: the stack did not stop within 30s; killing it" >&2
  kill -KILL -- "-$group" 2>/dev/null || true
  group=
  return 1
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$oha_pid" ]; then kill "$oha_pid" 2>/dev/null || true; fi
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; fi
  if [ -n "$group" ]; then
    say "stopping the stack"
    stop_stack || status=1
    say "stopped"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The numbers: oha's JSON, /metrics before and after each run, the start-up timing and the
# summary, in Python (files under $dev).
report() { # report run DEV NAME | report cpu DEV NAME before|after | report warmup DEV | report startup DEV PID BIN PORT COUNT | report summary DEV
  python3 - "$@" <<'PY'
import http.client, json, os, re, signal, statistics, subprocess, sys, time

STEPS = ["check_access", "claim_name", "create_trust_root", "resolve_security_groups",
         "create_vms", "read_back_vms", "sign_node_certs", "commit", "publish_dns", "roll_back"]
SAMPLE = re.compile(r'^(plinth_founding_step_duration_seconds_sum|plinth_founding_step_duration_seconds_count'
                    r'|plinth_foundings_total)\{([^}]*)\}\s+(\S+)')

def metrics(path):
    found = {}
    for line in open(path):
        m = SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = labels.get("step") or labels.get("outcome") or "?"
            found[(m.group(1), key)] = float(m.group(3))
    return found

def delta(before, after, name):
    keys = {k for (n, k) in after if n == name}
    return {k: after[(name, k)] - before.get((name, k), 0.0) for k in keys}

def ms(seconds):
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"

def oha_numbers(dev, name):
    oha = json.load(open(f"{dev}/oha-{name}.json"))
    summary = oha["summary"]
    codes = {str(k): int(v) for k, v in oha.get("statusCodeDistribution", {}).items()}
    errors = {str(k): int(v) for k, v in oha.get("errorDistribution", {}).items()}
    created = codes.get("201", 0)
    clean = created == sum(codes.values()) and not errors
    # Latency of the foundings (2xx answers) when something else came back too.
    pct = (None if clean else oha.get("latencyPercentilesSuccessful")) or oha.get("latencyPercentiles", {})
    slowest = summary.get("slowest") if clean else pct.get("p99.99")
    return {
        "p50": pct.get("p50"), "p90": pct.get("p90"), "p99": pct.get("p99"), "max": slowest,
        "wall": summary["total"], "created": created, "fps": created / summary["total"],
        "not_201": {k: v for k, v in sorted(codes.items()) if k != "201"}, "errors": errors,
    }

PROGRAMS = {"plinth": "plinth", "plinth-compute-": "compute sim", "postgres": "PostgreSQL",
            "pdns_server": "PowerDNS", "oha": "oha (load generator)"}

def cmd_cpu(dev, name, when):
    """CPU seconds (user + system) each program on the machine has used so far, by program."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        program = PROGRAMS.get(comm, "other")
        used[program] = used.get(program, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    json.dump(used, open(f"{dev}/cpu-{name}-{when}.json", "w"))

def cpu_per_founding(dev, name, foundings):
    try:
        before = json.load(open(f"{dev}/cpu-{name}-before.json"))
        after = json.load(open(f"{dev}/cpu-{name}-after.json"))
    except OSError:
        return {}
    # Processes that ended during the run take their time with them: a lower bound for "other".
    return {p: max(after.get(p, 0.0) - before.get(p, 0.0), 0.0) / max(foundings, 1)
            for p in list(PROGRAMS.values()) + ["other"]}

def cmd_warmup(dev):
    r = oha_numbers(dev, "warmup")
    if r["not_201"] or r["errors"]:
        sys.exit(f"bench-load: the warm-up foundings failed: {r['not_201']} {r['errors']}; "
                 f"see {dev}/plinth.log")

def cmd_run(dev, name):
    r = oha_numbers(dev, name)
    before = metrics(f"{dev}/metrics-{name}-before.txt")
    after = metrics(f"{dev}/metrics-{name}-after.txt")
    sums = delta(before, after, "plinth_founding_step_duration_seconds_sum")
    counts = delta(before, after, "plinth_founding_step_duration_seconds_count")
    order = [s for s in STEPS if s in counts] + sorted(s for s in counts if s not in STEPS)
    r["steps"] = {s: (sums.get(s, 0.0) / counts[s], int(counts[s])) for s in order if counts[s] > 0}
    r["outcomes"] = {k: int(v) for k, v in sorted(delta(before, after, "plinth_foundings_total").items()) if v}
    r["cpu"] = cpu_per_founding(dev, name, r["created"])
    json.dump(r, open(f"{dev}/result-{name}.json", "w"))
    not_201 = ", ".join(f"{k}: {v}" for k, v in r["not_201"].items()) or "none"
    errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
    print(f"  {r['created']} foundings (201) in {r['wall']:.2f} s: {r['fps']:.2f} foundings/s")
    print(f"  latency: p50 {ms(r['p50'])}, p90 {ms(r['p90'])}, p99 {ms(r['p99'])}, max {ms(r['max'])}")
    print(f"  answers other than 201: {not_201}; transport errors: {errors}")
    print(f"  plinth's founding outcomes: {', '.join(f'{k} {v}' for k, v in r['outcomes'].items()) or 'none'}")
    if r["cpu"]:
        total = sum(r["cpu"].values())
        print(f"  CPU time per founding, whole machine: {total * 1000:.1f} ms (" +
              ", ".join(f"{p} {t * 1000:.1f}" for p, t in r["cpu"].items()) + " ms)")
    print("  mean time per founding step during the run:")
    for step, (mean, count) in r["steps"].items():
        print(f"    {step:<24} {mean * 1000:9.2f} ms  ({count} times)")

def cmd_startup(dev, pid, binary, port, count):
    port, count = int(port), int(count)
    raw = open(f"/proc/{pid}/environ", "rb").read().decode()
    env = dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    env["PLINTH__SERVER__LISTEN"] = f"127.0.0.1:{port}"
    env["PLINTH__SERVER__BOOTSTRAP_LISTEN"] = f"127.0.0.1:{port + 1}"
    env["PLINTH__FOUNDING__BOOTSTRAP_BASE_URL"] = f"https://127.0.0.1:{port + 1}"
    env.pop("PLINTH__SERVER__METRICS_LISTEN", None)
    times = []
    for i in range(1, count + 1):
        log = open(f"{dev}/startup-{i}.log", "wb")
        started = time.monotonic()
        proc = subprocess.Popen([binary, "serve"], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    sys.exit(f"bench-load: the second plinth exited ({proc.returncode}); see {dev}/startup-{i}.log")
                if time.monotonic() - started > 60:
                    sys.exit(f"bench-load: the second plinth was not ready within 60 s; see {dev}/startup-{i}.log")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/readyz")
                    status = conn.getresponse().status
                    conn.close()
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.005)
            times.append(time.monotonic() - started)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    result = {"median": statistics.median(times), "max": max(times), "runs": times}
    json.dump(result, open(f"{dev}/startup.json", "w"))
    print(f"  spawn to the first 200 from /readyz: median {ms(result['median'])}, max {ms(result['max'])} "
          f"(runs: {', '.join(f'{t * 1000:.1f}' for t in times)} ms)")

def cmd_summary(dev):
    facts = dict(line.rstrip("\n").split("=", 1) for line in open(f"{dev}/facts.env") if "=" in line)
    for key in ("single", "n", "c", "n16", "c16", "warmup", "keygen_secs"):
        facts[key] = int(facts[key])
    for key in ("keygen_per_sec", "rss_idle_kb", "rss_warm_kb", "rss_peak_kb", "rss_hwm_kb"):
        facts[key] = float(facts[key])
    cpuinfo = open("/proc/cpuinfo").read()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    facts["cpu"] = model.group(1).strip() if model else "unknown CPU"
    facts["nproc"] = len(os.sched_getaffinity(0))
    meminfo = re.search(r"^MemTotal:\s*(\d+)", open("/proc/meminfo").read(), re.M)
    facts["memory"] = f"{int(meminfo.group(1)) / 1048576:.1f} GiB" if meminfo else "unknown"
    facts["kernel"] = f"{os.uname().sysname} {os.uname().release}"
    facts["loadavg"] = " ".join(open("/proc/loadavg").read().split()[:3])
    facts["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    startup = json.load(open(f"{dev}/startup.json"))
    runs = [("single", "one at a time", facts["single"], 1),
            ("c", f"{facts['c']}-way", facts["n"], facts["c"]),
            ("c16", f"{facts['c16']}-way", facts["n16"], facts["c16"])]
    results = {name: json.load(open(f"{dev}/result-{name}.json")) for name, *_ in runs}
    keygen = facts["keygen_per_sec"]
    mib = lambda kb: f"{kb / 1024:.1f} MiB"
    out = []
    out.append("## Load: foundings through the local stack (`make bench-load`)")
    out.append("")
    out.append(f"- Command: `make bench-load` (BENCH_SINGLE={facts['single']} BENCH_N={facts['n']} "
               f"BENCH_C={facts['c']} BENCH_N16={facts['n16']} BENCH_C16={facts['c16']}; "
               f"{facts['warmup']} warm-up foundings)")
    out.append(f"- Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, "
               f"{facts['kernel']}; load average {facts['loadavg_start']} before the runs, "
               f"{facts['loadavg']} after")
    out.append(f"- Build: release, {facts['rustc']}, commit {facts['commit']}; load generator {facts['oha']}")
    out.append(f"- Stack: `scripts/run-stack.sh` on loopback — PostgreSQL 15 (fsync off), the compute "
               f"simulator with no injected latency, DNS {facts['dns']}; 3-node foundings, "
               f"`POST /clusters` with `{{\"control_plane_count\":3}}`")
    out.append(f"- Date: {facts['date']}")
    out.append("")
    out.append("| run | foundings | concurrency | p50 | p90 | p99 | max | foundings/s | not 201 "
               "| foundings/s ÷ RSA-2048 keys/s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, count, concurrency in runs:
        r = results[name]
        bad = sum(r["not_201"].values()) + sum(r["errors"].values())
        detail = ", ".join([f"{k}: {v}" for k, v in r["not_201"].items()]
                           + [f"{k}: {v}" for k, v in r["errors"].items()])
        out.append(f"| {label} | {count} | {concurrency} | {ms(r['p50'])} | {ms(r['p90'])} | "
                   f"{ms(r['p99'])} | {ms(r['max'])} | {r['fps']:.2f} | "
                   f"{bad}{f' ({detail})' if detail else ''} | {r['fps'] / keygen:.2f} |")
    out.append("")
    steps = []
    for name, *_ in runs:
        steps += [s for s in results[name]["steps"] if s not in steps]
    steps = [s for s in STEPS if s in steps] + [s for s in steps if s not in STEPS]
    out.append("Mean time per founding step during each run (from `plinth_founding_step_duration_seconds`):")
    out.append("")
    out.append("| step | " + " | ".join(label for _, label, *_ in runs) + " |")
    out.append("|---|" + "---|" * len(runs))
    for step in steps:
        cells = []
        for name, *_ in runs:
            mean = results[name]["steps"].get(step)
            cells.append(f"{mean[0] * 1000:.2f} ms" if mean else "–")
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("CPU time per founding during each run, whole machine, by program (user + system, "
               "from /proc; 2 cores give 2 s of CPU per second):")
    out.append("")
    out.append("| program | " + " | ".join(label for _, label, *_ in runs) + " |")
    out.append("|---|" + "---|" * len(runs))
    for program in list(PROGRAMS.values()) + ["other", "total"]:
        cells = []
        for name, *_ in runs:
            cpu = results[name].get("cpu") or {}
            value = sum(cpu.values()) if program == "total" else cpu.get(program)
            cells.append(f"{value * 1000:.1f} ms" if cpu and value is not None else "–")
        out.append(f"| {program} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| measure | value |")
    out.append("|---|---|")
    out.append(f"| RSA-2048 key generation, {facts['nproc']} threads for {facts['keygen_secs']} s, stack idle | "
               f"{keygen:.2f} keys/s |")
    out.append(f"| plinth RSS idle, before any founding | {mib(facts['rss_idle_kb'])} |")
    out.append(f"| plinth RSS after the warm-up | {mib(facts['rss_warm_kb'])} |")
    out.append(f"| plinth RSS peak during the {facts['c16']}-way run (sampled every 0.1 s) | "
               f"{mib(facts['rss_peak_kb'])} |")
    out.append(f"| plinth VmHWM after the {facts['c16']}-way run (peak since start) | {mib(facts['rss_hwm_kb'])} |")
    out.append(f"| start to first 200 from /readyz, migrated database ({len(startup['runs'])} starts) | "
               f"median {ms(startup['median'])}, max {ms(startup['max'])} |")
    print("\n".join(out))

mode, args = sys.argv[1], sys.argv[2:]
try:
    {"run": cmd_run, "warmup": cmd_warmup, "startup": cmd_startup, "summary": cmd_summary,
     "cpu": cmd_cpu}[mode](*args)
except KeyboardInterrupt:
    # Ctrl-C: die of SIGINT, as the shell expects of a program it interrupted (no traceback).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
PY
}

# The stack in a session of its own (as scripts/check-make-run.sh does): stopping its process
# group is what Ctrl-C in `make run`'s terminal does.
say "starting the stack in $dev (log: $stack_log)"
setsid scripts/run-stack.sh </dev/null >"$stack_log" 2>&1 &
group=$!
for _ in $(seq 1 1800); do
  grep -q '^curl ' "$stack_log" && break
  if ! kill -0 "$group" 2>/dev/null; then
    tail -n 30 "$stack_log" >&2
    die "the stack exited before it was up"
  fi
  sleep 0.2
done
grep -q '^curl ' "$stack_log" || die "the stack was not up within 6 minutes"
set -a
# shellcheck disable=SC1091
source "$dev/stack.env"
set +a
token=$(cat "$dev/token")
mapfile -t plinth_pids < <(pgrep -g "$group" -f -x "$plinth_bin serve" || true)
[ "${#plinth_pids[@]}" = 1 ] || die "expected one '$plinth_bin serve' in the stack, found ${#plinth_pids[@]}"
plinth_pid=${plinth_pids[0]}
dns=disabled
[ -z "${PDNS_API_URL:-}" ] || dns=powerdns

# No injected compute latency or failures, whatever config/compute-sim.toml says.
curl -fsS -X DELETE -H "Authorization: Bearer $COMPUTE_TOKEN" "$COMPUTE_URL/admin/faults" >/dev/null
faults=$(curl -fsS -H "Authorization: Bearer $COMPUTE_TOKEN" "$COMPUTE_URL/admin/faults")
[ "$faults" = '{}' ] || die "the compute service still injects faults: $faults"
say "stack up: plinth pid $plinth_pid on $PLINTH_URL, DNS $dns, compute faults cleared"

# kB of resident memory of the stack's plinth: VmRSS now, or VmHWM (the peak so far).
rss_kb() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$plinth_pid/status"; }

# One load run: oha's JSON and /metrics before and after, then its numbers.
load() { # load NAME COUNT CONCURRENCY
  local name=$1 count=$2 concurrency=$3
  curl -fsS "$PLINTH_URL/metrics" >"$dev/metrics-$name-before.txt"
  report cpu "$dev" "$name" before
  # In the background, waited for: oha stops quietly on Ctrl-C (exit 0, partial results), so in
  # the foreground an interrupted run would pass for a short one; `wait` lets the INT trap run.
  timeout "$run_timeout" "$oha" --no-tui "${oha_json[@]}" "${oha_breakdown[@]}" \
    -o "$dev/oha-$name.json" -n "$count" -c "$concurrency" -t "${request_timeout}s" \
    --worker-threads 1 -m POST -T application/json -d '{"control_plane_count":3}' \
    -H "Authorization: Bearer $token" "$PLINTH_URL/clusters" </dev/null &
  oha_pid=$!
  local status=0
  wait "$oha_pid" || status=$?
  oha_pid=
  [ "$status" = 0 ] || die "oha failed (exit $status; 124: past ${run_timeout}s) in run $name"
  report cpu "$dev" "$name" after
  curl -fsS "$PLINTH_URL/metrics" >"$dev/metrics-$name-after.txt"
}

loadavg_start=$(cut -d" " -f1-3 /proc/loadavg)
rss_idle=$(rss_kb VmRSS)
say "warming up: $warmup foundings, then 2 s for anything that refills in the background"
if [ "$warmup" -gt 0 ]; then
  load warmup "$warmup" 1
  report warmup "$dev"
fi
sleep 2
rss_warm=$(rss_kb VmRSS)

say "run 1: $single foundings, one at a time"
load single "$single" 1
report run "$dev" single
sleep 2

say "run 2: $n foundings at concurrency $c"
load c "$n" "$c"
report run "$dev" c
sleep 2

say "run 3: $n16 foundings at concurrency $c16 (sampling plinth's RSS every 0.1 s)"
(
  while [ -r "/proc/$plinth_pid/status" ]; do
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$plinth_pid/status" 2>/dev/null || true
    sleep 0.1
  done
) >"$dev/rss-samples.txt" &
sampler=$!
load c16 "$n16" "$c16"
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=
rss_hwm=$(rss_kb VmHWM)
rss_peak=$(sort -n "$dev/rss-samples.txt" | tail -n 1)
report run "$dev" c16

say "RSA-2048 key generation on every core for ${keygen_secs}s, the stack idle"
sleep 2
target/release/examples/rsa_keygen_rate "$keygen_secs" | tee "$dev/keygen.txt"
keygen_rate=$(sed -n 's/.*keys_per_sec=\([0-9.]*\).*/\1/p' "$dev/keygen.txt" | tail -n 1)
[ -n "$keygen_rate" ] || die "rsa_keygen_rate printed no rate"

say "start-up: a second plinth with the stack's environment, spawn to the first 200 from /readyz, $startups times"
report startup "$dev" "$plinth_pid" "$root/$plinth_bin" "$replica_port" "$startups"

# What the summary states besides the runs' numbers (KEY=VALUE lines; machine facts are read there).
{
  echo "single=$single"; echo "n=$n"; echo "c=$c"; echo "n16=$n16"; echo "c16=$c16"
  echo "warmup=$warmup"; echo "keygen_secs=$keygen_secs"; echo "keygen_per_sec=$keygen_rate"
  echo "rss_idle_kb=$rss_idle"; echo "rss_warm_kb=$rss_warm"; echo "rss_peak_kb=${rss_peak:-0}"
  echo "rss_hwm_kb=$rss_hwm"; echo "dns=$dns"; echo "loadavg_start=$loadavg_start"
  echo "rustc=$(rustc --version)"; echo "oha=$("$oha" --version)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
} >"$dev/facts.env"

say "stopping the stack"
stop_stack || die "the stack did not stop"
for port in "$PLINTH_PORT" "$PLINTH_BOOTSTRAP_PORT" "$COMPUTE_PORT" "$PLINTH_PG_PORT" \
  "$PLINTH_PDNS_API_PORT" "$replica_port" "$((replica_port + 1))"; do
  ! port_taken "$port" || die "something still listens on port $port"
done
say "stopped"
report summary "$dev"
