# Shell helpers the comparison scripts share (sourced, not run): packages, ports, and starting
# Redis, twemproxy, `ringkv local` and the floor servers on loopback. A script sets SCRIPT (its
# name, for messages) before sourcing this file, and may set LAUNCH, a command prefix every
# server is started under (instructions.sh starts them under callgrind).
#
# Everything started is noted in STARTED and stopped, with WORK removed, when the script exits.

LAUNCH=()

say() { printf '%s\n' "$*" >&2; }
fail() {
  say "$SCRIPT: $*"
  exit 1
}

install_packages() {
  say "installing $* from Debian's packages"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

# Installs what is missing of Redis, its tools and twemproxy, and the packages named.
need_redis_and_twemproxy() {
  local missing=("$@")
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  { command -v redis-benchmark && command -v redis-cli; } >/dev/null 2>&1 || missing+=(redis-tools)
  command -v nutcracker >/dev/null 2>&1 || missing+=(nutcracker)
  ((${#missing[@]} == 0)) || install_packages "${missing[@]}"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/$SCRIPT.XXXXXX")
STARTED=()
# Stops every server started so far.
stop_servers() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  STARTED=()
}
cleanup() {
  stop_servers
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports are drawn below Linux's ephemeral range, so that no outgoing connection of the
# benchmark holds one, and each is checked to have no listener.
declare -A HANDED_OUT=()
PORT=
next_free_port() {
  local candidate
  for _ in $(seq 1000); do
    candidate=$((20000 + RANDOM % 12000))
    [ -z "${HANDED_OUT[$candidate]:-}" ] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      HANDED_OUT[$candidate]=1
      PORT=$candidate
      return
    fi
  done
  fail "no free port found"
}

# Waits up to `tenths` tenths of a second (default 100) for a listener on `port`.
wait_for_port() {
  local port=$1 what=$2 tenths=${3:-100}
  for _ in $(seq "$tenths"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  fail "$what did not listen on port $port within $((tenths / 10)) s"
}

# Waits up to `tenths` tenths of a second for a line starting with `prefix` in `file`.
wait_for_line() {
  local file=$1 prefix=$2 what=$3 tenths=$4
  for _ in $(seq "$tenths"); do
    grep -q "^$prefix" "$file" 2>/dev/null && return
    sleep 0.1
  done
  fail "$what did not print '$prefix' within $((tenths / 10)) s: $(cat "${file%.out}.log" 2>/dev/null)"
}

# The pid of the server started last.
LAST_PID=

start_redis() {
  local port=$1 name=$2
  mkdir -p "$WORK/$name"
  "${LAUNCH[@]}" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$WORK/$name" --daemonize no --logfile "$WORK/$name/redis.log" &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
  wait_for_port "$port" "redis-server $name" 300
}

# Three Redis servers behind nutcracker (ketama, fnv1a_64), as twemproxy is usually run:
# TWEMPROXY_PORT is its port, TWEMPROXY_PIDS the four pids, comma-separated.
TWEMPROXY_PORT=
TWEMPROXY_PIDS=
start_twemproxy() {
  local shards=() i stats_port
  TWEMPROXY_PIDS=
  for i in 1 2 3; do
    next_free_port
    shards+=("$PORT")
    start_redis "$PORT" "shard$i"
    TWEMPROXY_PIDS="${TWEMPROXY_PIDS:+$TWEMPROXY_PIDS,}$LAST_PID"
  done
  next_free_port
  TWEMPROXY_PORT=$PORT
  next_free_port
  stats_port=$PORT
  cat >"$WORK/nutcracker.yml" <<EOF
ringkv_compare:
  listen: 127.0.0.1:$TWEMPROXY_PORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:${shards[0]}:1
   - 127.0.0.1:${shards[1]}:1
   - 127.0.0.1:${shards[2]}:1
EOF
  "${LAUNCH[@]}" nutcracker -c "$WORK/nutcracker.yml" -s "$stats_port" -a 127.0.0.1 \
    -o "$WORK/nutcracker.log" &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
  TWEMPROXY_PIDS="$TWEMPROXY_PIDS,$LAST_PID"
  wait_for_port "$TWEMPROXY_PORT" nutcracker 300
}

# `ringkv local` with three backends and one copy per key: RINGKV_PORT is its RESP door's
# port, RINGKV_NATIVE its frontend's address, LAST_PID its pid.
RINGKV_PORT=
RINGKV_NATIVE=
start_ringkv_local() {
  local ringkv=$1
  RUST_LOG=warn "${LAUNCH[@]}" "$ringkv" local --backends 3 --replicas 1 \
    --listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 >"$WORK/ringkv.out" 2>"$WORK/ringkv.log" &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
  wait_for_line "$WORK/ringkv.out" 'resp listening on ' "ringkv local" 600
  RINGKV_NATIVE=$(sed -n 's/^frontend listening on //p' "$WORK/ringkv.out")
  RINGKV_PORT=$(sed -n 's/^resp listening on .*:\([0-9]*\)$/\1/p' "$WORK/ringkv.out")
}

# Starts the floor server (examples/thread_floor.rs) as `name` with the flags given;
# FLOOR_PORT and LAST_PID are its port and pid.
FLOOR_PORT=
start_floor() {
  local floor=$1 name=$2
  shift 2
  "${LAUNCH[@]}" "$floor" --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
  wait_for_line "$WORK/$name.out" 'floor listening on ' "$name" 300
  FLOOR_PORT=$(sed -n 's/^floor listening on .*:\([0-9]*\)$/\1/p' "$WORK/$name.out")
}
