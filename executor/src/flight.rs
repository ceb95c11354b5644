//! The executor's Arrow Flight service, served on the same address as `ExecutorService`.
//!
//! - `DoExchange`: the client streams record batches with a `text` column (utf8) and gets each
//!   back with an `embedding` column (FixedSizeList<Float32>) computed by this executor's forked
//!   workers, in the same length-sorted batches as the stream. Per call, rows, bytes of text and
//!   bytes on the wire are bounded (`[flight]`), a call idle for `flight.idle_timeout` is
//!   ended, and at most `max_concurrent_calls` calls run at once; one more is answered
//!   "overloaded" rather than queued.
//! - `DoGet` with the query's name as ticket: the latest output batches of the running query,
//!   from [`RecentOutput`], a bounded in-memory copy of what tasks wrote (it may show rows of an
//!   attempt that later failed and was retried; the sink is the record of truth).
//! - `ListFlights`: that one flight, so generic clients can discover the ticket.
//!
//! Every call carries the cluster token when one is configured. A bad call gets a Flight error
//! that says what is wrong; the service keeps serving.

use std::pin::Pin;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use embedstream_core::auth::ClusterToken;
use embedstream_core::spec::FlightSpec;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::ExecutorMetrics;
use crate::model::Embed;
use crate::records::{embedding_array, embedding_type, reject_reason, RecentOutput};

/// The name of the column `DoExchange` embeds.
pub const TEXT_COLUMN: &str = "text";
/// The name of the column `DoExchange` adds.
pub const EMBEDDING_COLUMN: &str = "embedding";

/// Room for Arrow IPC framing (message headers, offsets, validity, padding) in the wire limit of
/// a `DoExchange` call, so that a call of small batches is never refused for its overhead.
const WIRE_SLACK_BYTES: usize = 1 << 20;

/// The most bytes of Flight messages (`data_header` plus `data_body`) one `DoExchange` call may
/// send: twice `max_bytes_per_call`, for the text and the other columns sent along with it,
/// plus [`WIRE_SLACK_BYTES`]. The row and text limits count only decoded batches; this bounds
/// what they never see, such as dictionary (delta) messages and extra columns. It is above the
/// server's size limit for one message (`max_bytes_per_call` + 1 MiB), so one message alone
/// never passes it.
fn wire_limit(limits: &FlightSpec) -> usize {
    limits.max_bytes_per_call.saturating_mul(2).saturating_add(WIRE_SLACK_BYTES)
}

pub struct FlightEmbedder {
    pub query: String,
    /// The first text model (none when the query's models take only images).
    pub workers: Option<Arc<dyn Embed>>,
    pub limits: FlightSpec,
    pub max_text_bytes: usize,
    pub token: ClusterToken,
    pub recent: Arc<RecentOutput>,
    pub metrics: Arc<ExecutorMetrics>,
    calls: Arc<Semaphore>,
}

impl FlightEmbedder {
    pub fn new(
        query: String,
        workers: Option<Arc<dyn Embed>>,
        limits: FlightSpec,
        max_text_bytes: usize,
        token: ClusterToken,
        recent: Arc<RecentOutput>,
        metrics: Arc<ExecutorMetrics>,
    ) -> FlightEmbedder {
        let calls = Arc::new(Semaphore::new(limits.max_concurrent_calls));
        FlightEmbedder { query, workers, limits, max_text_bytes, token, recent, metrics, calls }
    }

    /// The schema of the query's output rows that `DoGet` serves.
    fn output_schema(&self) -> SchemaRef {
        self.recent.schema()
    }

    /// Counts a call, and its refusal if `result` is one.
    fn record(&self, method: &str, result: &Result<(), Status>) {
        self.metrics.flight_calls.with_label_values(&[method]).inc();
        if let Err(s) = result {
            self.metrics.flight_errors.with_label_values(&[method, code_name(s)]).inc();
        }
    }
}

fn code_name(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::NotFound => "not_found",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        _ => "other",
    }
}

/// The texts of `batch`'s `text` column, borrowed from it, or why the batch cannot be embedded.
/// `first_row` is the call's row number of the batch's first row, for messages. Nothing is
/// copied here, so the caller can check the call's byte limit first (see [`Exchange::embed`]).
fn texts_of(batch: &RecordBatch, first_row: usize, max_text_bytes: usize) -> Result<Vec<&str>, Status> {
    let schema = batch.schema();
    let Some(column) = batch.column_by_name(TEXT_COLUMN) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(Status::invalid_argument(format!(
            "input has no `{TEXT_COLUMN}` column (it has: {})",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )));
    };
    if schema.column_with_name(EMBEDDING_COLUMN).is_some() {
        return Err(Status::invalid_argument(format!("input already has an `{EMBEDDING_COLUMN}` column")));
    }
    let values: Vec<Option<&str>> = match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => column.as_string::<i64>().iter().collect(),
        DataType::Utf8View => column.as_string_view().iter().collect(),
        other => {
            return Err(Status::invalid_argument(format!(
                "column `{TEXT_COLUMN}` is {other}; it must be a string column (utf8)"
            )))
        }
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, text)| match reject_reason(text.map(str::as_bytes), max_text_bytes) {
            None => Ok(text.expect("not null")),
            Some(reason) => Err(Status::invalid_argument(format!(
                "row {}: {}",
                first_row + i,
                reason.replacen("value", TEXT_COLUMN, 1)
            ))),
        })
        .collect()
}

/// `batch` with an `embedding` column of `vectors` (row-major, `dim` per row) appended.
fn with_embeddings(batch: &RecordBatch, vectors: Vec<f32>, dim: usize) -> Result<RecordBatch, Status> {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(EMBEDDING_COLUMN, embedding_type(dim), false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(embedding_array(vectors, dim)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Status::internal(e.to_string()))
}

/// One `DoExchange` call: input batches are embedded one after another as they arrive, and the
/// running totals enforce the per-call limits. The call's slot (`permit`) is given back as soon
/// as the call ends, by its end, its first error or the client going away, before the client
/// learns of it.
struct Exchange {
    input: FlightRecordBatchStream,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    workers: Arc<dyn Embed>,
    limits: FlightSpec,
    max_text_bytes: usize,
    metrics: Arc<ExecutorMetrics>,
    rows: usize,
    bytes: usize,
}

impl Exchange {
    /// The next answer; `None` once the input ended or an error was returned.
    async fn next(&mut self) -> Option<Result<RecordBatch, Status>> {
        self.permit.as_ref()?;
        // A call holds one of the `max_concurrent_calls` slots while it is open: a client that
        // opens one and then sends nothing must not keep that slot forever.
        let idle = self.limits.idle_timeout();
        let result = match tokio::time::timeout(idle, self.input.next()).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no input batch for {}; the call was ended to free its slot (flight.idle_timeout)",
                self.limits.idle_timeout
            ))),
            Ok(None) => {
                self.permit = None;
                return None;
            }
            Ok(Some(batch)) => match batch.map_err(Status::from) {
                Ok(batch) => self.embed(batch).await,
                Err(e) => Err(e),
            },
        };
        match &result {
            Ok(b) => self.metrics.flight_embeddings.inc_by(b.num_rows() as u64),
            Err(s) => {
                self.permit = None;
                tracing::info!(code = ?s.code(), message = s.message(), "DoExchange call refused");
                self.metrics.flight_errors.with_label_values(&["do_exchange", code_name(s)]).inc();
            }
        }
        Some(result)
    }

    async fn embed(&mut self, batch: RecordBatch) -> Result<RecordBatch, Status> {
        let first_row = self.rows;
        self.rows += batch.num_rows();
        if self.rows > self.limits.max_rows_per_call {
            return Err(Status::resource_exhausted(format!(
                "call sent over {} rows, the limit flight.max_rows_per_call",
                self.limits.max_rows_per_call
            )));
        }
        let texts = texts_of(&batch, first_row, self.max_text_bytes)?;
        // Counted before the texts are copied: a Utf8View column can repeat one long string in
        // every row, so its texts may add up to far more than the bytes that were sent.
        self.bytes += texts.iter().map(|t| t.len()).sum::<usize>();
        if self.bytes > self.limits.max_bytes_per_call {
            return Err(Status::resource_exhausted(format!(
                "call sent over {} bytes of text, the limit flight.max_bytes_per_call",
                self.limits.max_bytes_per_call
            )));
        }
        let texts = texts.into_iter().map(str::to_string).collect();
        let (vectors, _) = self.workers.clone().embed(texts).await.map_err(|e| Status::internal(e.to_string()))?;
        with_embeddings(&batch, vectors, self.workers.dim())
    }
}

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn encode(
    schema: Option<SchemaRef>,
    batches: BoxStream<'static, Result<RecordBatch, Status>>,
) -> FlightStream<FlightData> {
    let mut builder = FlightDataEncoderBuilder::new();
    if let Some(schema) = schema {
        builder = builder.with_schema(schema);
    }
    Box::pin(builder.build(batches.map_err(FlightError::from)).map_err(Status::from))
}

#[tonic::async_trait]
impl FlightService for FlightEmbedder {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;
    type DoExchangeStream = FlightStream<FlightData>;

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let checked = self.token.check(request.metadata(), "flight.DoExchange");
        let workers = checked.and_then(|()| {
            self.workers
                .clone()
                .ok_or_else(|| Status::failed_precondition("this query has no text model: DoExchange embeds texts"))
        });
        let permit = workers.as_ref().map(|_| ()).map_err(Clone::clone).and_then(|()| {
            self.calls.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted(format!(
                    "overloaded: {} DoExchange calls in flight (flight.max_concurrent_calls)",
                    self.limits.max_concurrent_calls
                ))
            })
        });
        self.record("do_exchange", &permit.as_ref().map(|_| ()).map_err(Clone::clone));
        let (permit, workers) = (permit?, workers?);
        // Every message is counted as it arrives, before it is decoded (see `wire_limit`).
        let limit = wire_limit(&self.limits);
        let mut sent = 0usize;
        let messages = request.into_inner().and_then(move |m| {
            sent += m.data_header.len() + m.data_body.len();
            futures::future::ready(if sent > limit {
                Err(Status::resource_exhausted(format!(
                    "call sent over {limit} bytes of Arrow messages, the limit 2 × flight.max_bytes_per_call + 1 MiB"
                )))
            } else {
                Ok(m)
            })
        });
        // A client may open the call with a message that holds only the descriptor or metadata
        // (pyarrow does); there is no IPC message in it to decode.
        let messages = messages.try_filter(|m| futures::future::ready(!m.data_header.is_empty()));
        let input = FlightRecordBatchStream::new_from_flight_data(messages.map_err(FlightError::from));
        let call = Exchange {
            input,
            permit: Some(permit),
            workers,
            limits: self.limits.clone(),
            max_text_bytes: self.max_text_bytes,
            metrics: self.metrics.clone(),
            rows: 0,
            bytes: 0,
        };
        let batches = futures::stream::unfold(call, |mut call| async move {
            let item = call.next().await?;
            Some((item, call))
        });
        Ok(Response::new(encode(None, batches.boxed())))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let result = self.token.check(request.metadata(), "flight.DoGet").and_then(|()| {
            let ticket = request.get_ref().ticket.clone();
            match std::str::from_utf8(&ticket) {
                Ok(q) if q == self.query => Ok(()),
                _ => Err(Status::not_found(format!(
                    "no query `{}` on this executor; the ticket is the query's name, `{}`",
                    String::from_utf8_lossy(&ticket),
                    self.query
                ))),
            }
        });
        self.record("do_get", &result);
        result?;
        let batches = futures::stream::iter(self.recent.snapshot().into_iter().map(Ok)).boxed();
        Ok(Response::new(encode(Some(self.output_schema()), batches)))
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let result = self.token.check(request.metadata(), "flight.ListFlights");
        self.record("list_flights", &result);
        result?;
        let info = FlightInfo::new()
            .try_with_schema(&self.output_schema())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(FlightDescriptor::new_path(vec![self.query.clone()]))
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(self.query.clone())));
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(info)]))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("no handshake: send the cluster token as `authorization: Bearer` on each call"))
    }

    async fn get_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("use ListFlights"))
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use ListFlights"))
    }

    async fn get_schema(&self, _: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("use ListFlights"))
    }

    async fn do_put(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("embed texts with DoExchange"))
    }

    async fn do_action(&self, _: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("no actions"))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let result = self.token.check(request.metadata(), "flight.ListActions");
        self.record("list_actions", &result);
        result?;
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, ArrayRef, Int64Array, StringArray, StringViewArray};

    fn batch(column: ArrayRef, name: &str) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(name, column.data_type().clone(), true)])),
            vec![column],
        )
        .unwrap()
    }

    #[test]
    fn text_column_is_checked() {
        let ok = batch(Arc::new(StringArray::from(vec!["a shoe", "a hat"])), "text");
        assert_eq!(texts_of(&ok, 0, 100).unwrap(), vec!["a shoe", "a hat"]);
        let view = batch(Arc::new(StringViewArray::from(vec!["a shoe"])), "text");
        assert_eq!(texts_of(&view, 0, 100).unwrap(), vec!["a shoe"]);

        let missing = texts_of(&batch(Arc::new(StringArray::from(vec!["x"])), "title"), 0, 100).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        assert!(missing.message().contains("no `text` column (it has: title)"), "{}", missing.message());

        let wrong = texts_of(&batch(Arc::new(Int64Array::from(vec![1])), "text"), 0, 100).unwrap_err();
        assert!(wrong.message().contains("Int64; it must be a string"), "{}", wrong.message());

        let null = texts_of(&batch(Arc::new(StringArray::from(vec![Some("x"), None])), "text"), 10, 100).unwrap_err();
        assert!(null.message().contains("row 11: text is null"), "{}", null.message());
        let long = texts_of(&ok, 0, 5).unwrap_err();
        assert!(long.message().contains("row 0: text is 6 bytes"), "{}", long.message());
    }
}
