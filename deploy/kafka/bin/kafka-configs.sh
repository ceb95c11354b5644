#!/usr/bin/env bash
# Kafka's kafka-configs.sh, from the Kafka that deploy/setup.sh installed.
exec "$(dirname "$0")/kafka-run-class.sh" kafka.admin.ConfigCommand "$@"
