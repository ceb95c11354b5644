//! The Delta Lake sink. Its data files are the Parquet sink's (the same columns, the same
//! `dt=`/`hr=` partition directories, one file per task attempt and directory), written by the
//! same task writer; what differs is how a batch becomes visible: [`DeltaCommitter`] adds the
//! files of the batch's successful attempts to the table's Delta log in one commit with the
//! query's transaction (`txn { appId: query id, version: batch id }`), through delta-rs. Every
//! Delta reader (Spark, Trino, DuckDB, pandas through `deltalake`) then sees each record once;
//! files of failed attempts are never in the log, and are deleted.

mod committer;
mod schema;

pub use committer::{last_file, DeltaCommitter};
