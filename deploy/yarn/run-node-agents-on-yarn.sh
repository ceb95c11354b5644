#!/usr/bin/env bash
# Runs embedstream node agents inside the containers of an existing YARN cluster, with YARN's
# distributed shell application: no new daemon on the Hadoop nodes. Each YARN container runs
# deploy/yarn/node-agent-in-yarn-container.sh, which starts a node agent offering that
# container's vcores and memory to an embedstream resource manager (run it anywhere reachable,
# for instance on an edge node). Queries are then submitted to that RM as usual.
#
#   deploy/yarn/run-node-agents-on-yarn.sh RM_HOST:PORT BUNDLE_ON_HDFS NODES VCORES MEMORY_MB
#
#   BUNDLE_ON_HDFS  hdfs:///path/embedstream-bundle.tar.gz made by deploy/yarn/make-bundle.sh
#   NODES           how many node agents (YARN containers)
#
# Needs `yarn` and `hdfs` on PATH and HADOOP_HOME set (for the distributed shell jar). The token
# is read from EMBEDSTREAM_TOKEN and passed in the containers' environment.
# NOT TESTED HERE: no YARN cluster was available; see the README's Cluster section.
set -euo pipefail
rm_address=${1:?RM_HOST:PORT} bundle=${2:?hdfs:///.../embedstream-bundle.tar.gz}
nodes=${3:?number of node agents} vcores=${4:?vcores per node agent} memory_mb=${5:?memory per node agent, MB}
: "${HADOOP_HOME:?HADOOP_HOME must point at the Hadoop installation}"
: "${EMBEDSTREAM_TOKEN:?EMBEDSTREAM_TOKEN must hold the cluster token}"
here=$(cd "$(dirname "$0")" && pwd)
jar=$(find "$HADOOP_HOME/share/hadoop/yarn" -name 'hadoop-yarn-applications-distributedshell-*.jar' | head -n 1)
[ -n "$jar" ] || { echo "no distributed shell jar under $HADOOP_HOME/share/hadoop/yarn" >&2; exit 1; }
hdfs dfs -test -e "$bundle" || { echo "no bundle at $bundle" >&2; exit 1; }

# YARN grants each container some overhead beyond what the node agent offers to embedstream.
exec yarn jar "$jar" org.apache.hadoop.yarn.applications.distributedshell.Client \
  -jar "$jar" \
  -appname embedstream-node-agents \
  -shell_script "$here/node-agent-in-yarn-container.sh" \
  -shell_env "EMBEDSTREAM_RM=$rm_address" \
  -shell_env "EMBEDSTREAM_BUNDLE=$bundle" \
  -shell_env "EMBEDSTREAM_VCORES=$vcores" \
  -shell_env "EMBEDSTREAM_MEMORY_MB=$memory_mb" \
  -shell_env "EMBEDSTREAM_TOKEN=$EMBEDSTREAM_TOKEN" \
  -num_containers "$nodes" \
  -container_vcores "$vcores" \
  -container_memory "$((memory_mb + 512))" \
  -keep_containers_across_application_attempts \
  -timeout 31536000000
