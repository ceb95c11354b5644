#!/usr/bin/env bash
# Kafka's kafka-delete-records.sh, from the Kafka that deploy/setup.sh installed.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.DeleteRecordsCommand "$@"
