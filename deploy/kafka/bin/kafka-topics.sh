#!/usr/bin/env bash
# Kafka's kafka-topics.sh, from the Kafka that deploy/setup.sh installed.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.TopicCommand "$@"
