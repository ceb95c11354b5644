#!/usr/bin/env bash
# Runs one Tansu broker on loopback with SQLite storage (its memory engine reports wrong high
# watermarks).
#   deploy/broker.sh start PORT DATA_DIR   start in the background; returns once it accepts connections
#   deploy/broker.sh stop DATA_DIR         stop the broker started with that data directory
set -euo pipefail
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
cmd=${1:-}
case "$cmd" in
  start)
    port=${2:?port}; dir=${3:?data directory}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    # Tansu reads the sqlite:// path relative to its working directory.
    (cd "$dir" && exec "$CACHE/bin/tansu" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://tansu.db" >"$dir/broker.log" 2>&1) &
    echo $! >"$dir/broker.pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "broker: 127.0.0.1:$port (pid $(cat "$dir/broker.pid"), log $dir/broker.log)" >&2; exit 0; fi
      kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null || { echo "broker: exited; see $dir/broker.log" >&2; exit 1; }
      sleep 0.1
    done
    echo "broker: not listening on $port after 10 s" >&2; exit 1 ;;
  stop)
    dir=${2:?data directory}
    if [ -f "$dir/broker.pid" ]; then kill "$(cat "$dir/broker.pid")" 2>/dev/null || true; fi
    rm -f "$dir/broker.pid" ;;
  *) echo "usage: $0 start PORT DATA_DIR | stop DATA_DIR" >&2; exit 2 ;;
esac
