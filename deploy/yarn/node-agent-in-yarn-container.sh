#!/usr/bin/env bash
# The command of each YARN container started by run-node-agents-on-yarn.sh: fetches the bundle,
# then runs a node agent in the foreground on this container's host, with YARN's container
# directory as its work directory. When YARN kills the container, the agent and its executors go.
# NOT TESTED HERE (no YARN cluster); see the README's Cluster section.
set -euo pipefail
: "${EMBEDSTREAM_RM:?}" "${EMBEDSTREAM_BUNDLE:?}" "${EMBEDSTREAM_VCORES:?}" "${EMBEDSTREAM_MEMORY_MB:?}"
work=${PWD}/embedstream
mkdir -p "$work"
hdfs dfs -get "$EMBEDSTREAM_BUNDLE" "$work/bundle.tar.gz"
tar -xzf "$work/bundle.tar.gz" -C "$work"
export EMBEDSTREAM_CACHE="$work/cache"
host=$(hostname -f)
exec "$work/bin/embedstream" node-agent --master "rm://$EMBEDSTREAM_RM" --listen "$(getent hosts "$host" | awk '{print $1; exit}'):0" \
  --vcores "$EMBEDSTREAM_VCORES" --memory "${EMBEDSTREAM_MEMORY_MB}m" --work-dir "$work/containers"
