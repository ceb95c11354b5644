#!/usr/bin/env bash
# Runs one Apache Kafka broker (KRaft: broker and controller in one process, no ZooKeeper) on
# loopback, from the Kafka that deploy/setup.sh installed.
#   deploy/broker.sh start PORT DIR [PROPERTIES]  start in the background; returns once it serves
#   deploy/broker.sh run PORT DIR [PROPERTIES]    the same in the foreground (logs on stderr)
#   deploy/broker.sh stop DIR                     stop the broker started with that directory
# Clients connect to 127.0.0.1:PORT; the controller listens on a free port kept in
# DIR/controller.port, so the broker restarts on the same DIR with its data. PROPERTIES, a file of
# server properties, is added to the defaults below and wins over them (listeners, SASL, TLS).
# KAFKA_HEAP_OPTS (default -Xmx512m) sizes the broker's heap. BROKER_LISTENERS adds listeners
# beside PLAINTEXT, as "PROTOCOL:PORT ..." (say "SASL_PLAINTEXT:9094 SASL_SSL:9095"), each named
# for its protocol: PROPERTIES then sets what they need (sasl.enabled.mechanisms, ssl.keystore...).
#
# One node of a cluster of several, each started with its own PORT and DIR and these, the same
# on every node but the first two:
#   BROKER_NODE_ID=2 BROKER_HOST=127.0.0.2    this node's id and loopback address
#   BROKER_CONTROLLER_PORT=P                  this node's controller port
#   BROKER_VOTERS=1@127.0.0.1:P1,2@127.0.0.2:P2,3@127.0.0.3:P3   the controller quorum
#   BROKER_CLUSTER_ID=ID                      one id for the whole cluster (22 base64url characters)
#   BROKER_REPLICATION=3                      default.replication.factor and the internal topics'
#                                             replicas (min.insync.replicas is one less)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The comment above, without its marks: what --help prints (on stdout, exit 0).
help_text() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case "${1:-}" in -h | --help | help) help_text; exit 0 ;; esac

# Writes DIR/server.properties and formats DIR/data once.
configure() { # port dir [properties]
  local port=$1 dir=$2 extra=${3:-}
  local host=${BROKER_HOST:-127.0.0.1} node=${BROKER_NODE_ID:-1} replicas=${BROKER_REPLICATION:-1}
  if [ -n "${BROKER_CONTROLLER_PORT:-}" ]; then
    echo "$BROKER_CONTROLLER_PORT" >"$dir/controller.port"
  elif [ ! -s "$dir/controller.port" ]; then
    # A free port that none of the broker's listeners uses: the caller picked PORT free a moment
    # ago and released it, so the system can hand the same number out again.
    local taken=("$port") l
    for l in ${BROKER_LISTENERS:-}; do taken+=("${l#*:}"); done
    python3 -c '
import socket, sys
held = []
while True:
    s = socket.socket(); s.bind((sys.argv[1], 0)); held.append(s)
    if str(s.getsockname()[1]) not in sys.argv[2:]:
        print(s.getsockname()[1]); break' "$host" "${taken[@]}" >"$dir/controller.port"
  fi
  local cport; cport=$(cat "$dir/controller.port")
  local listeners="PLAINTEXT://$host:$port" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" l
  for l in ${BROKER_LISTENERS:-}; do
    listeners="$listeners,${l%%:*}://$host:${l#*:}"
    map="$map,${l%%:*}:${l%%:*}"
  done
  {
    echo "process.roles=broker,controller"
    echo "node.id=$node"
    echo "controller.quorum.voters=${BROKER_VOTERS:-$node@$host:$cport}"
    echo "controller.listener.names=CONTROLLER"
    echo "listeners=$listeners,CONTROLLER://$host:$cport"
    echo "advertised.listeners=$listeners"
    echo "listener.security.protocol.map=$map"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "log.dirs=$dir/data"
    # Internal topics with as many replicas as the cluster has nodes (one, unless a cluster is
    # started), and few partitions so that they are made fast.
    local isr=$((replicas > 1 ? replicas - 1 : 1))
    echo "default.replication.factor=$replicas"
    echo "min.insync.replicas=$isr"
    echo "offsets.topic.replication.factor=$replicas"
    echo "offsets.topic.num.partitions=4"
    echo "transaction.state.log.replication.factor=$replicas"
    echo "transaction.state.log.min.isr=$isr"
    echo "transaction.state.log.num.partitions=4"
    echo "share.coordinator.state.topic.replication.factor=$replicas"
    echo "share.coordinator.state.topic.min.isr=$isr"
    echo "group.initial.rebalance.delay.ms=0"
    # Topics are made on purpose (embedstream creates its output topics), as on most clusters.
    echo "auto.create.topics.enable=false"
    if [ -n "$extra" ]; then cat "$extra"; fi
  } >"$dir/server.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    "$here/kafka/bin/kafka-storage.sh" format --ignore-formatted -t "${BROKER_CLUSTER_ID:-$(cluster_id)}" \
      -c "$dir/server.properties" >/dev/null
  fi
}

# A cluster id of 16 random bytes, base64url without padding, as kafka-storage random-uuid makes
# (and, as it does, never starting with "-", which would read as an option).
cluster_id() {
  python3 -c '
import base64, os
while True:
    u = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not u.startswith("-"):
        print(u)
        break'
}

run() { # port dir [properties]
  local port=${1:?port} dir=${2:?directory}
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  configure "$port" "$dir" "${3:-}"
  export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m}"
  # A broker lives long: the full JIT; the serial collector suits a small heap on few cores.
  export KAFKA_JVM_PERFORMANCE_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC}"
  exec "$here/kafka/bin/kafka-run-class.sh" kafka.Kafka "$dir/server.properties"
}

cmd=${1:-}
case "$cmd" in
  run) shift; run "$@" ;;
  start)
    port=${2:?port}; dir=${3:?directory}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    "$0" run "$port" "$dir" "${4:-}" >"$dir/broker.log" 2>&1 &
    echo $! >"$dir/broker.pid"
    for _ in $(seq 1 600); do
      if grep -q "Kafka Server started" "$dir/broker.log"; then
        echo "broker: Apache Kafka on 127.0.0.1:$port (pid $(cat "$dir/broker.pid"), log $dir/broker.log)" >&2
        exit 0
      fi
      kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null || { echo "broker: exited; see $dir/broker.log" >&2; tail -5 "$dir/broker.log" >&2; exit 1; }
      sleep 0.1
    done
    echo "broker: not serving on $port after 60 s; see $dir/broker.log" >&2; exit 1 ;;
  stop)
    dir=${2:?directory}
    if [ -f "$dir/broker.pid" ]; then
      pid=$(cat "$dir/broker.pid")
      # A controlled shutdown takes a few seconds; past 30 s the broker is killed.
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/broker.pid" ;;
  *) echo "usage: $0 start PORT DIR [PROPERTIES] | run PORT DIR [PROPERTIES] | stop DIR (--help: all of it)" >&2; exit 2 ;;
esac
