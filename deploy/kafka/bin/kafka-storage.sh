#!/usr/bin/env bash
# Kafka's kafka-storage.sh, from the Kafka that deploy/setup.sh installed.
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
