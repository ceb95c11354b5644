#!/usr/bin/env bash
# Runs one class of the Apache Kafka that deploy/setup.sh installed, as Kafka's own
# kafka-run-class.sh does: kafka-run-class.sh CLASS [ARGS...]. The scripts beside it name the
# classes of Kafka's usual tools (kafka-consumer-groups.sh, kafka-topics.sh, ...).
# KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS and KAFKA_OPTS work as in Kafka's scripts.
set -euo pipefail
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
libs="$CACHE/kafka/libs"
[ -d "$libs" ] || { echo "kafka: $libs is missing: run deploy/setup.sh" >&2; exit 1; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A tool is short-lived: the quick JIT tier and the serial collector start it fastest.
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx256m}"
read -r -a perf <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
read -r -a opts <<<"${KAFKA_OPTS:-}"
exec java "${heap[@]}" "${perf[@]}" -Dlog4j2.configurationFile="$here/../log4j2.properties" \
  "${opts[@]}" -cp "$libs/*" "$@"
