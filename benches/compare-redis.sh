#!/usr/bin/env bash
# Compares ringkv's Redis-protocol door with Redis alone and with twemproxy (nutcracker, ketama)
# in front of three Redis servers. Everything runs on loopback on this machine:
#
#   redis       one redis-server
#   twemproxy   nutcracker (ketama, fnv1a_64) in front of three redis-servers
#   ringkv      `ringkv local --backends 3 --replicas 1`, driven through its RESP door (one copy
#               per key, as twemproxy in front of Redis keeps)
#   floor       examples/thread_floor.rs: a thread per connection answering SET and GET from an
#               in-process map, with no hop and no log; the least any server of the design card
#               costs here, so a target it misses is out of the card's reach on this machine
#   floor-hop   the same with ringkv's shape of hop and none of its work: each request goes to
#               one of three backend threads (by its key's hash) over a loopback connection that
#               all client connections share (a combining writer), and a reader thread per
#               backend puts each client's replies back in order and writes them; what ringkv
#               costs beyond it is ringkv's own work
#   floor-hop-yield  floor-hop with the one trick ringkv plays at pipeline 1: a thread that takes
#               a connection's writer's turn for a single request yields its CPU once first
#
# Each is driven by the same redis-benchmark runs (SET then GET, 50 clients, 32-byte values,
# random keys out of 100000, pipeline 1 and 16), interleaved over ROUNDS rounds, the order of the
# servers rotating from round to round. `kvcli bench` runs the same shape against ringkv's native
# port (target ringkv-native). The script prints the median of each figure over the rounds and
# the ringkv / twemproxy ratios, and those of the floors against twemproxy and ringkv against
# the floors, then stops everything it started.
#
# When `perf stat` may watch processes here, each run is also counted on the server side (every
# process of the target: Redis; twemproxy and its three Redis servers; the one `ringkv local`
# process): context switches, system calls and CPU time, divided by the requests of the run (the
# SET and the GET runs of one pipeline depth together), and printed as a second table. The CPU
# time is also split into user and system time (from /proc/PID/stat, in clock ticks), so that a
# server's own work (user) shows apart from what the kernel does for its sockets and threads.
#
# Missing redis-server, redis-tools or nutcracker are installed from Debian's packages.
#
# Settings (environment): ROUNDS (3), REQUESTS_P1 (100000), REQUESTS_P16 (400000),
# RAW_CSV (a file to keep every run's figures in; default: not kept), ETCD (1: also run the
# optional row with three copies of every key, ringkv against three etcd members, by
# `cargo bench --bench etcd`, installing Debian's etcd-server if it is missing; default 0).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS_P1=${REQUESTS_P1:-100000}
REQUESTS_P16=${REQUESTS_P16:-400000}
CLIENTS=50
VALUE_SIZE=32
KEYSPACE=100000
PIPELINES=(1 16)

SCRIPT=compare-redis
. benches/servers.sh

# --- tools -------------------------------------------------------------------------------------
extra=()
[ "${ETCD:-0}" = 1 ] && ! command -v etcd >/dev/null 2>&1 && extra+=(etcd-server)
need_redis_and_twemproxy "${extra[@]}"

say "building ringkv (release)"
cargo build --release --quiet --bins --example thread_floor
RINGKV=target/release/ringkv
KVCLI=target/release/kvcli
FLOOR=target/release/examples/thread_floor

# --- servers -----------------------------------------------------------------------------------
next_free_port
REDIS_PORT=$PORT
start_redis "$REDIS_PORT" redis
REDIS_PIDS=$LAST_PID
start_twemproxy
start_ringkv_local "$RINGKV"
RINGKV_PIDS=$LAST_PID
start_floor "$FLOOR" floor
FLOOR_PIDS=$LAST_PID
FLOOR_DIRECT_PORT=$FLOOR_PORT
start_floor "$FLOOR" floor-hop --hop --backends 3
FLOOR_HOP_PIDS=$LAST_PID
FLOOR_HOP_PORT=$FLOOR_PORT
start_floor "$FLOOR" floor-hop-yield --hop --backends 3 --lone-yield
FLOOR_YIELD_PIDS=$LAST_PID
FLOOR_YIELD_PORT=$FLOOR_PORT

HAVE_KVCLI_BENCH=1
if ! "$KVCLI" bench --help >/dev/null 2>&1; then
  HAVE_KVCLI_BENCH=0
  say "kvcli bench is not there: skipping the ringkv-native runs"
fi

HAVE_PERF=0
if command -v perf >/dev/null 2>&1 &&
  perf stat -x, -e context-switches,raw_syscalls:sys_enter,task-clock -p "$REDIS_PIDS" \
    -o /dev/null -- sleep 0.1 >/dev/null 2>&1; then
  HAVE_PERF=1
else
  say "perf stat cannot watch processes here: no server-side counts"
fi

# --- runs --------------------------------------------------------------------------------------
RESULTS="$WORK/results.csv"
echo "round,target,pipeline,test,rps,p50_ms,p99_ms" >"$RESULTS"
COSTS="$WORK/costs.csv"
echo "round,target,pipeline,cs_per_request,syscalls_per_request,cpu_us_per_request,user_us_per_request,sys_us_per_request" >"$COSTS"
TICKS_PER_SECOND=$(getconf CLK_TCK)

# User and system CPU time, in clock ticks, of the processes `pids` (comma-separated) so far.
cpu_ticks() {
  local pid user=0 system=0 fields
  for pid in ${1//,/ }; do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing parenthesis.
    fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    set -- $fields
    user=$((user + ${12})) system=$((system + ${13}))
  done
  echo "$user $system"
}

# Runs the rest of the line while perf stat counts the processes `pids`, then notes the counts
# per request (`requests` in all) for the round, target and pipeline.
counted() {
  local round=$1 target=$2 pipeline=$3 pids=$4 requests=$5 perf_pid
  shift 5
  if [ "$HAVE_PERF" = 0 ]; then
    "$@"
    return
  fi
  local before after
  perf stat -x, -e context-switches,raw_syscalls:sys_enter,task-clock -p "$pids" \
    -o "$WORK/perf.txt" &
  perf_pid=$!
  before=$(cpu_ticks "$pids")
  "$@"
  after=$(cpu_ticks "$pids")
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  # perf -x, lines: value,unit,event,...; task-clock is in ms.
  awk -F, -v round="$round" -v target="$target" -v pipeline="$pipeline" -v n="$requests" \
    -v before="$before" -v after="$after" -v hz="$TICKS_PER_SECOND" '
    $3 == "context-switches" { cs = $1 }
    $3 ~ /^raw_syscalls:sys_enter/ { sc = $1 }
    $3 == "task-clock" { ms = $1 }
    END {
      split(before, b, " "); split(after, a, " ")
      if (n > 0 && cs != "") printf "%s,%s,%s,%.3f,%.3f,%.3f,%.3f,%.3f\n", round, target, pipeline,
        cs / n, sc / n, ms * 1000 / n, (a[1] - b[1]) * 1e6 / hz / n, (a[2] - b[2]) * 1e6 / hz / n
    }
  ' "$WORK/perf.txt" >>"$COSTS"
}

requests_for() { if [ "$1" = 1 ]; then echo "$REQUESTS_P1"; else echo "$REQUESTS_P16"; fi; }

# redis-benchmark's CSV: "test","rps","avg","min","p50","p95","p99","max" (latencies in ms).
run_redis_benchmark() {
  local round=$1 target=$2 port=$3 pipeline=$4
  redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -c "$CLIENTS" -d "$VALUE_SIZE" \
    -r "$KEYSPACE" -n "$(requests_for "$pipeline")" -P "$pipeline" --csv 2>>"$WORK/benchmark.log" |
    tr -d '"' |
    awk -F, -v round="$round" -v target="$target" -v pipeline="$pipeline" \
      '$1 == "SET" || $1 == "GET" { print round "," target "," pipeline "," $1 "," $2 "," $5 "," $7 }' \
      >>"$RESULTS"
}

# kvcli bench --json: ops_per_sec and latency_us {p50, p99} at the top level, first in the line.
run_kvcli_bench() {
  local round=$1 pipeline=$2 mix test json
  for mix in put get; do
    test=SET
    [ "$mix" = get ] && test=GET
    json=$("$KVCLI" --frontend "$RINGKV_NATIVE" bench --clients "$CLIENTS" \
      --requests "$(requests_for "$pipeline")" --pipeline "$pipeline" --value-size "$VALUE_SIZE" \
      --keyspace "$KEYSPACE" --mix "$mix" --json --no-progress 2>>"$WORK/benchmark.log") || {
      say "kvcli bench failed (round $round, pipeline $pipeline, $mix)"
      continue
    }
    printf '%s\n' "$json" | sed -nE 's/.*"ops_per_sec":([0-9.]+),"latency_us":\{"p50":([0-9.]+),"p90":[0-9.]+,"p99":([0-9.]+).*/\1 \2 \3/p' |
      head -n 1 |
      awk -v round="$round" -v pipeline="$pipeline" -v test="$test" \
        '{ printf "%s,ringkv-native,%s,%s,%s,%.3f,%.3f\n", round, pipeline, test, $1, $2 / 1000, $3 / 1000 }' \
        >>"$RESULTS"
  done
}

TARGETS=(redis twemproxy ringkv floor floor-hop floor-hop-yield)
[ "$HAVE_KVCLI_BENCH" = 1 ] && TARGETS+=(ringkv-native)
for round in $(seq "$ROUNDS"); do
  # Rotate the order, so that no server always runs first or last in a round.
  order=()
  for i in "${!TARGETS[@]}"; do
    order+=("${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}")
  done
  for pipeline in "${PIPELINES[@]}"; do
    for target in "${order[@]}"; do
      say "round $round/$ROUNDS, pipeline $pipeline: $target"
      # Two runs (SET, GET) of this many requests each.
      n=$((2 * $(requests_for "$pipeline")))
      case $target in
        redis) counted "$round" redis "$pipeline" "$REDIS_PIDS" "$n" \
          run_redis_benchmark "$round" redis "$REDIS_PORT" "$pipeline" ;;
        twemproxy) counted "$round" twemproxy "$pipeline" "$TWEMPROXY_PIDS" "$n" \
          run_redis_benchmark "$round" twemproxy "$TWEMPROXY_PORT" "$pipeline" ;;
        ringkv) counted "$round" ringkv "$pipeline" "$RINGKV_PIDS" "$n" \
          run_redis_benchmark "$round" ringkv "$RINGKV_PORT" "$pipeline" ;;
        floor) counted "$round" floor "$pipeline" "$FLOOR_PIDS" "$n" \
          run_redis_benchmark "$round" floor "$FLOOR_DIRECT_PORT" "$pipeline" ;;
        floor-hop) counted "$round" floor-hop "$pipeline" "$FLOOR_HOP_PIDS" "$n" \
          run_redis_benchmark "$round" floor-hop "$FLOOR_HOP_PORT" "$pipeline" ;;
        floor-hop-yield) counted "$round" floor-hop-yield "$pipeline" "$FLOOR_YIELD_PIDS" "$n" \
          run_redis_benchmark "$round" floor-hop-yield "$FLOOR_YIELD_PORT" "$pipeline" ;;
        ringkv-native) counted "$round" ringkv-native "$pipeline" "$RINGKV_PIDS" "$n" \
          run_kvcli_bench "$round" "$pipeline" ;;
      esac
    done
  done
done

[ -z "${RAW_CSV:-}" ] || cp "$RESULTS" "$RAW_CSV"

echo "# machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- table of medians --------------------------------------------------------------------------
# What both tables' awk programs share: the median of the values noted under a key.
MEDIANS='
  function median(key,    n, i, j, tmp, v) {
    n = count[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) v[i] = values[key, i]
    for (i = 2; i <= n; i++) {
      tmp = v[i]
      for (j = i - 1; j >= 1 && v[j] > tmp; j--) v[j + 1] = v[j]
      v[j + 1] = tmp
    }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function show(x, format) { return x == "" ? "n/a" : sprintf(format, x) }
'
echo "# compare-redis: medians of $ROUNDS rounds; $CLIENTS clients, $VALUE_SIZE-byte values, random keys of $KEYSPACE"
echo "# requests per run: $REQUESTS_P1 at pipeline 1, $REQUESTS_P16 at pipeline 16; latencies in ms"
echo "# redis, twemproxy (ketama over 3 redis-servers), ringkv (RESP door, 3 backends), floor"
echo "# (examples/thread_floor.rs: a thread per connection, an in-process map, no hop) and floor-hop"
echo "# (the same behind three backend threads, one shared connection each) and floor-hop-yield"
echo "# (floor-hop with ringkv's lone writer's yield): redis-benchmark"
[ "$HAVE_KVCLI_BENCH" = 1 ] && echo "# ringkv-native: kvcli bench against the native port"
[ "$HAVE_KVCLI_BENCH" = 1 ] || echo "# ringkv-native: skipped (no kvcli bench)"
awk -F, -v targets="${TARGETS[*]}" "$MEDIANS"'
  function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
  function ratios(a, b,    p, t, r, w) {
    printf "\n%s / %s (requests/s: higher is better; latency: lower is better)\n", a, b
    printf "%-5s %-8s %12s %9s %9s\n", "test", "pipeline", "requests/s", "p50", "p99"
    for (p = 1; p <= 2; p++) for (t = 1; t <= 2; t++) {
      r = a SUBSEP pipelines[p] SUBSEP tests[t]
      w = b SUBSEP pipelines[p] SUBSEP tests[t]
      printf "%-5s %-8s %12s %9s %9s\n", tests[t], pipelines[p],
        ratio(median(r SUBSEP 5), median(w SUBSEP 5)), ratio(median(r SUBSEP 6), median(w SUBSEP 6)),
        ratio(median(r SUBSEP 7), median(w SUBSEP 7))
    }
  }
  NR > 1 {
    for (m = 5; m <= 7; m++) {
      key = $2 SUBSEP $3 SUBSEP $4 SUBSEP m
      values[key, ++count[key]] = $m + 0
    }
  }
  END {
    split(targets, names, " ")
    printf "\n%-5s %-8s %-16s %12s %9s %9s\n", "test", "pipeline", "target", "requests/s", "p50_ms", "p99_ms"
    split("1 16", pipelines, " ")
    split("SET GET", tests, " ")
    for (p = 1; p <= 2; p++) for (t = 1; t <= 2; t++) for (n = 1; n in names; n++) {
      base = names[n] SUBSEP pipelines[p] SUBSEP tests[t]
      printf "%-5s %-8s %-16s %12s %9s %9s\n", tests[t], pipelines[p], names[n],
        show(median(base SUBSEP 5), "%.0f"), show(median(base SUBSEP 6), "%.3f"),
        show(median(base SUBSEP 7), "%.3f")
    }
    ratios("ringkv", "twemproxy")
    ratios("floor", "twemproxy")
    ratios("floor-hop", "twemproxy")
    ratios("floor-hop-yield", "twemproxy")
    ratios("ringkv", "floor-hop")
    ratios("ringkv", "floor-hop-yield")
  }
' "$RESULTS"

[ "$HAVE_PERF" = 1 ] && awk -F, -v targets="${TARGETS[*]}" "$MEDIANS"'
  NR > 1 {
    for (m = 4; m <= 8; m++) {
      key = $2 SUBSEP $3 SUBSEP m
      values[key, ++count[key]] = $m + 0
    }
  }
  END {
    split(targets, names, " ")
    printf "\nserver side, per request (perf stat on every process of the target; medians)\n"
    printf "%-8s %-16s %14s %14s %12s %12s %12s\n", "pipeline", "target", "ctx_switches", "syscalls", "cpu_us",
      "user_us", "sys_us"
    split("1 16", pipelines, " ")
    for (p = 1; p <= 2; p++) for (n = 1; n in names; n++) {
      base = names[n] SUBSEP pipelines[p]
      printf "%-8s %-16s %14s %14s %12s %12s %12s\n", pipelines[p], names[n],
        show(median(base SUBSEP 4), "%.2f"), show(median(base SUBSEP 5), "%.2f"),
        show(median(base SUBSEP 6), "%.2f"), show(median(base SUBSEP 7), "%.2f"),
        show(median(base SUBSEP 8), "%.2f")
    }
  }
' "$COSTS"

# --- optional: three copies against etcd -------------------------------------------------------
if [ "${ETCD:-0}" = 1 ]; then
  say "ringkv with three copies against etcd with three members (cargo bench --bench etcd, ~1 min)"
  echo
  echo "# with three copies: ringkv (3 backends, --replicas 3) against etcd (3 members), PUT and GET,"
  echo "# 50 clients at pipeline 1; benches/etcd.rs says how each is driven"
  if ! cargo bench --quiet --bench etcd 2>"$WORK/etcd.log" |
    grep -v -e '^# ringkv benchmark' -e '^# units' -e '^# logical cpus' -e '^# cpu'; then
    say "cargo bench --bench etcd failed:"
    tail -n 20 "$WORK/etcd.log" >&2
    exit 1
  fi
fi
