#!/usr/bin/env python3
"""What a team would write instead of embedstream: one Python process that consumes a topic with
a consumer group, tokenizes, runs the same ONNX model with onnxruntime's default threading, mean-
pools and normalises, and produces each vector (little-endian f32) to an output topic. Batches of
BATCH (default 32) in arrival order, each padded to its longest text. It stops once it has read up
to the offsets the topic had when it started, commits, and prints a JSON summary.

    baseline_consumer.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC MODEL_ONNX TOKENIZER_JSON [BATCH]

`embedstream-bench --python PY --baseline benches/baseline_consumer.py` runs it.

Needs confluent-kafka, tokenizers, onnxruntime and numpy (deploy/setup.sh --python).
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tokenizers import Tokenizer

def main():
    bootstrap, topic, out_topic, model_onnx, tokenizer_json = sys.argv[1:6]
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=128)
    session = ort.InferenceSession(model_onnx)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "baseline-" + topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # The broker does not create topics on produce: make the output topic like the input one.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(out_topic, len(partitions), 1)]).values():
        try:
            f.result()
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    deadline = time.time() + 10
    while not producer.list_topics(out_topic, timeout=5).topics[out_topic].partitions and time.time() < deadline:
        time.sleep(0.05)
    end = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.subscribe([topic])

    started = None
    done = 0
    position = {p: 0 for p in partitions}
    while any(position[p] < end[p] for p in partitions):
        msgs = consumer.consume(num_messages=batch, timeout=1.0)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        if started is None:
            started = time.perf_counter()
        texts = [m.value().decode("utf-8") for m in msgs]
        encs = tok.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        (hidden,) = session.run(["last_hidden_state"],
                                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        for msg, vec in zip(msgs, v.astype("<f4")):
            producer.produce(out_topic, key=msg.key(), value=vec.tobytes(), partition=msg.partition())
            position[msg.partition()] = msg.offset() + 1
        producer.poll(0)
        done += len(msgs)
    producer.flush(30)
    consumer.commit(asynchronous=False)
    consumer.close()
    seconds = time.perf_counter() - (started or time.perf_counter())
    print(json.dumps({"embeddings": done, "seconds": seconds, "embeddings_per_second": done / max(seconds, 1e-9)}))


if __name__ == "__main__":
    main()
