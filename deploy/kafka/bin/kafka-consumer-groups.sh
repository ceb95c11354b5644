#!/usr/bin/env bash
# Kafka's kafka-consumer-groups.sh, from the Kafka that deploy/setup.sh installed.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@"
