//! Delta tables as readers that know nothing of embedstream read them: Spark with Delta Lake's
//! own jars (`deploy/setup.sh --spark`), and delta-rs's Python package (`deltalake`). Each runs
//! as a Python process of the setup's environment and answers in JSON.

use std::path::Path;

use super::cache;

/// The table as `deltalake` (delta-rs's Python package, from PyPI) reads it.
pub fn read_with_deltalake(table: &Path) -> serde_json::Value {
    python(DELTALAKE_READER, &[table.to_str().unwrap()])
}

/// The table as Spark reads it (pyspark with Delta Lake's own jars, `deploy/setup.sh --spark`).
pub fn read_with_spark(table: &Path) -> serde_json::Value {
    let jars: Vec<String> = std::fs::read_dir(cache().join("spark/libs"))
        .expect("deploy/setup.sh --spark")
        .filter_map(|e| Some(e.ok()?.path().to_str()?.to_string()))
        .filter(|j| j.contains("delta-"))
        .collect();
    assert_eq!(jars.len(), 2, "delta-spark and delta-storage in the cache: {jars:?}");
    python(SPARK_READER, &[table.to_str().unwrap(), &jars.join(",")])
}

const SPARK_READER: &str = r#"
import json, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").appName("delta-reader")
    .config("spark.jars", sys.argv[2])
    .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
    .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    .config("spark.ui.enabled", "false")
    .getOrCreate())
df = spark.read.format("delta").load(sys.argv[1])
rows = sorted((r["partition"], r["offset"], r["value"]) for r in df.select("partition", "offset", "value").collect())
types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
dims = sorted(set(len(r["embedding"]) for r in df.select("embedding").collect()))
print(json.dumps({"rows": [list(r) for r in rows], "types": types, "dims": dims}))
spark.stop()
"#;

/// Runs `script` in the setup's Python with `args`; its standard output is JSON.
pub fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(cache().join("pyenv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("pyenv python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const DELTALAKE_READER: &str = r#"
import json, os, sys
from urllib.parse import unquote, urlparse
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
t = dt.to_pyarrow_table()
owner = dt.metadata().configuration.get("embedstream.queryId")
emb = t.schema.field("embedding").type
rows = sorted(zip(t["partition"].to_pylist(), t["offset"].to_pylist(), t["value"].to_pylist()))
print(json.dumps({
    "version": dt.version(),
    "rows": [[p, o, v] for p, o, v in rows],
    "norms": [sum(x * x for x in e) for e in t["embedding"].to_pylist()],
    "embedding": str(emb),
    "partition_columns": dt.metadata().partition_columns,
    "dt": sorted(set(t["dt"].to_pylist())),
    "files": sorted(os.path.relpath(unquote(urlparse(u).path), sys.argv[1]) for u in dt.file_uris()),
    "owner": owner,
    "model_versions": sorted(set(t["model_version"].to_pylist())),
    "txn": dt.transaction_version(owner) if owner else None,
}), flush=True)
# deltalake 1.6's runtime threads sometimes abort the interpreter's teardown ("terminate called
# without an active exception"): the answer is out, so leave at once.
os._exit(0)
"#;
