#!/usr/bin/env python3
"""What the team embedstream is built for runs today: Spark Structured Streaming (pyspark, local[2])
reading a Kafka topic with Spark's Kafka source, embedding with the same ONNX model in an
iterator pandas_udf that loads the model once per Python worker, and writing each vector
(little-endian f32) to a Kafka topic with Spark's Kafka sink. Trigger.AvailableNow: it reads what
the topic holds when it starts, in batches of at most --max-offsets records, and stops.

    spark_baseline.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC MODEL_ONNX TOKENIZER_JSON BATCH JARS_DIR
                      [--sorted] [--max-offsets N] [--checkpoint DIR]

Two variants:
- default: as the seed's team ran it: model batches of BATCH cut in arrival order, onnxruntime
  with its default threading in every Python worker;
- --sorted: the best a Spark user could write: each Arrow batch sorted by token count before it
  is cut into model batches (then put back in its order), one intra-op thread per task (Spark
  runs one task a core).

Prints a JSON summary: embeddings, and embeddings/s from the first batch's start to the last
batch's end (as embedstream counts from its first task to its last commit; the JVM's and the
session's start are not counted).

`embedstream-bench --spark PY --spark-script benches/spark_baseline.py --spark-jars DIR` runs it
(`cargo bench --bench pipeline` does once deploy/setup.sh --spark has been run). Needs pyspark,
pandas, pyarrow, tokenizers, onnxruntime and numpy, and the Kafka connector's jars in JARS_DIR.
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time


def parse():
    p = argparse.ArgumentParser()
    for name in ["bootstrap", "topic", "out_topic", "model_onnx", "tokenizer_json"]:
        p.add_argument(name)
    p.add_argument("batch", type=int)
    p.add_argument("jars_dir")
    p.add_argument("--sorted", action="store_true")
    p.add_argument("--max-offsets", type=int, default=1000)
    p.add_argument("--checkpoint")
    return p.parse_args()


def main():
    args = parse()
    # Quiet and offline: no UI, no Ivy, the jars given.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    jars = sorted(glob.glob(os.path.join(args.jars_dir, "*.jar")))
    if not jars:
        sys.exit(f"spark_baseline: no jars in {args.jars_dir} (deploy/setup.sh --spark)")
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("embedstream-spark-baseline")
        .config("spark.jars", ",".join(jars))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    embed = make_udf(args.model_onnx, args.tokenizer_json, args.batch, args.sorted)
    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(args.max_offsets))
        .load()
    )
    out = source.select(
        F.col("key"), embed(F.col("value").cast("string")).alias("value"), F.col("partition")
    )
    checkpoint = args.checkpoint or tempfile.mkdtemp(prefix="spark-baseline-")
    query = (
        out.writeStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("topic", args.out_topic)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    progress = [p for p in query.recentProgress if p["numInputRows"] > 0]
    spark.stop()
    rows = sum(p["numInputRows"] for p in progress)
    if not progress:
        print(json.dumps({"embeddings": 0, "seconds": 0, "embeddings_per_second": 0}))
        return
    start = parse_time(progress[0]["timestamp"])
    last = progress[-1]
    end = parse_time(last["timestamp"]) + last["durationMs"]["triggerExecution"] / 1000.0
    seconds = end - start
    print(json.dumps({"embeddings": rows, "seconds": seconds, "embeddings_per_second": rows / seconds,
                      "batches": len(progress)}))


def parse_time(text):
    from datetime import datetime

    return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def make_udf(model_onnx, tokenizer_json, batch, sort):
    from typing import Iterator

    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("binary")
    def embed(texts: Iterator[pd.Series]) -> Iterator[pd.Series]:
        tok, session = load(model_onnx, tokenizer_json, sort)
        for series in texts:
            yield pd.Series(embed_series(tok, session, list(series.fillna("")), batch, sort))

    return embed


# One model per Python worker: Spark reuses its Python workers between tasks
# (spark.python.worker.reuse), and the model stays loaded in this module.
_LOADED = {}


def load(model_onnx, tokenizer_json, sort):
    key = (model_onnx, tokenizer_json, sort)
    if key not in _LOADED:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(max_length=128)
        options = ort.SessionOptions()
        if sort:
            # One task a core: one thread a task.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
        _LOADED[key] = (tok, ort.InferenceSession(model_onnx, options))
    return _LOADED[key]


def embed_series(tok, session, texts, batch, sort):
    import numpy as np

    encs = tok.encode_batch(texts)
    order = list(range(len(texts)))
    if sort:
        order.sort(key=lambda i: len(encs[i].ids))
    out = [None] * len(texts)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(len(encs[i].ids) for i in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(rows):
            n = len(encs[i].ids)
            ids[r, :n] = encs[i].ids
            mask[r, :n] = 1
        (hidden,) = session.run(["last_hidden_state"],
                                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        for r, i in enumerate(rows):
            out[i] = v[r].astype("<f4").tobytes()
    return out


if __name__ == "__main__":
    main()
