#!/usr/bin/env bash
# Counts the user-space instructions each server runs per request, under valgrind's callgrind,
# for the same redis-benchmark runs as compare-redis.sh (SET then GET, 50 clients, 32-byte
# values, random keys out of 100000, pipeline 1 and 16):
#
#   twemproxy        nutcracker (ketama, fnv1a_64) and its three redis-servers, summed
#   ringkv           `ringkv local --backends 3 --replicas 1` through its RESP door
#   floor-hop-yield  examples/thread_floor.rs with ringkv's shape of hop and none of its work
#
# Unlike a timed run, a count moves little with the machine's load (about 2% from run to run on
# an idle machine; other work beside it makes requests queue more, and lowers it a few percent):
# run it before and after a change, on an idle machine, to see what the change did to the work
# done per request. What it leaves out: the
# kernel's work (system calls, wake-ups: most of the CPU time at pipeline 1, see
# compare-redis.sh), cache misses, and waiting. Under callgrind a process runs one thread at a
# time and many times slower, so requests queue more than at full speed and a server that
# batches (all three do) shares its per-batch work among more of them: the counts are a lower
# bound, closest to the truth at pipeline 16, where batches are full either way.
#
# Each count: WARMUP requests first, not counted (they fill the caches and the key space), then
# the counters are zeroed and REQUESTS counted; the figure is the instructions of every process
# of the target divided by REQUESTS. Missing valgrind, redis-server, redis-tools or nutcracker
# are installed from Debian's packages.
#
# Settings (environment): REQUESTS (20000), WARMUP (20000).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-20000}
CLIENTS=50
VALUE_SIZE=32
KEYSPACE=100000

SCRIPT=instructions
. benches/servers.sh

extra=()
command -v valgrind >/dev/null 2>&1 || extra+=(valgrind)
need_redis_and_twemproxy "${extra[@]}"

say "building ringkv (release)"
cargo build --release --quiet --bin ringkv --example thread_floor

# Every server of a target is started under callgrind; a dump holds what ran since the last.
LAUNCH=(valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$WORK/callgrind.%p")

# Instructions per request of the processes `pids` (comma-separated) during a run of `test`
# at `pipeline` against `port`.
count() {
  local pids=$1 port=$2 test=$3 pipeline=$4 pid total=0 file ir
  local bench=(redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -c "$CLIENTS" -d "$VALUE_SIZE"
    -r "$KEYSPACE" -P "$pipeline" -q)
  "${bench[@]}" -n "$WARMUP" >/dev/null 2>>"$WORK/benchmark.log"
  for pid in ${pids//,/ }; do
    callgrind_control --zero "$pid" >/dev/null 2>&1
  done
  "${bench[@]}" -n "$REQUESTS" >/dev/null 2>>"$WORK/benchmark.log"
  for pid in ${pids//,/ }; do
    rm -f "$WORK/callgrind.$pid".*
    callgrind_control --dump "$pid" >/dev/null 2>&1
    file=$(ls -t "$WORK/callgrind.$pid".* | head -n 1)
    ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p; s/^summary: *\([0-9]*\).*/\1/p' "$file" | head -n 1)
    [ -n "$ir" ] || fail "no instruction count in $file"
    total=$((total + ir))
  done
  echo $((total / REQUESTS))
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
measure() {
  local target=$1 pids=$2 port=$3 pipeline test
  for pipeline in 1 16; do
    for test in set get; do
      say "$target: ${test^^} at pipeline $pipeline"
      echo "$target $pipeline ${test^^} $(count "$pids" "$port" "$test" "$pipeline")" >>"$RESULTS"
    done
  done
}

# One target at a time: valgrind's slowness would otherwise be shared out by the scheduler.
start_twemproxy
measure twemproxy "$TWEMPROXY_PIDS" "$TWEMPROXY_PORT"
stop_servers
start_ringkv_local target/release/ringkv
measure ringkv "$LAST_PID" "$RINGKV_PORT"
stop_servers

start_floor target/release/examples/thread_floor floor-hop-yield --hop --backends 3 --lone-yield
measure floor-hop-yield "$LAST_PID" "$FLOOR_PORT"

echo "# machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "# instructions: user-space instructions per request under callgrind (valgrind $(valgrind --version | sed 's/^valgrind-//'))"
echo "# $REQUESTS requests counted after $WARMUP not counted; $CLIENTS clients, $VALUE_SIZE-byte values, random keys of $KEYSPACE"
awk '
  { ir[$1, $2, $3] = $4 }
  END {
    printf "%-5s %-8s %12s %12s %16s %18s %24s\n", "test", "pipeline", "twemproxy", "ringkv",
      "floor-hop-yield", "ringkv/twemproxy", "ringkv/floor-hop-yield"
    split("1 16", pipelines, " "); split("SET GET", tests, " ")
    for (p = 1; p <= 2; p++) for (t = 1; t <= 2; t++) {
      tw = ir["twemproxy", pipelines[p], tests[t]]
      rk = ir["ringkv", pipelines[p], tests[t]]
      fl = ir["floor-hop-yield", pipelines[p], tests[t]]
      printf "%-5s %-8s %12d %12d %16d %18.2f %24.2f\n", tests[t], pipelines[p], tw, rk, fl,
        tw ? rk / tw : 0, fl ? rk / fl : 0
    }
  }
' "$RESULTS"
