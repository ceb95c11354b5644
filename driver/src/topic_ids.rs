//! Kafka's topic ids, asked with librdkafka's DescribeTopics admin call. A topic id tells one
//! incarnation of a topic name from the next: a topic deleted and created again has a new id
//! and offsets that start over, which the query must not take for the old ones.
//!
//! rdkafka 0.39 does not wrap DescribeTopics, so this module calls librdkafka's C API through
//! rdkafka's own bindings. It is the driver's only `unsafe` code, and it is sound because:
//! - every object it creates (topic collection, admin options, result queue, event) is owned
//!   here, used on this thread only, and destroyed exactly once by a guard's `Drop`, after the
//!   last read of anything borrowed from it;
//! - the client handle outlives the call (it is borrowed from the `BaseConsumer` for the
//!   call's length), and librdkafka's admin calls are thread-safe on a shared handle;
//! - the C strings passed in live until `rd_kafka_TopicCollection_of_topic_names` returns (it
//!   copies them), and every string read out is copied into a Rust `String` before the event
//!   that owns it is destroyed; null pointers are checked before they are read.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Why topic ids could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TopicIdError {
    #[error("DescribeTopics: no answer within {0:?}")]
    Timeout(Duration),
    #[error("DescribeTopics: {0}")]
    Request(String),
    #[error("DescribeTopics: topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// Destroys a librdkafka object when dropped.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` was returned by the matching create call, is not null, and is
            // destroyed only here.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// A C string librdkafka owns, copied; empty when null.
///
/// # Safety
/// `s` is null or a NUL-terminated string valid for the call.
unsafe fn copied(s: *const std::os::raw::c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

/// librdkafka's base64 of a topic id (standard alphabet, padded) in Kafka's own form (URL-safe,
/// unpadded: `Uuid.toString()`), so that the id matches what Kafka's tools print.
/// Kafka's zero id ("no id": a broker before topic ids, Kafka 2.8) is an empty string.
fn kafka_form(base64: &str) -> String {
    let id = base64.trim_end_matches('=').replace('+', "-").replace('/', "_");
    if id.bytes().all(|b| b == b'A') {
        String::new()
    } else {
        id
    }
}

/// Each of `topics`' topic id (Kafka's base64 form, as `kafka-topics.sh --describe` prints it).
/// A topic that does not exist is an error naming it. A cluster too old to know topic ids
/// (before Kafka 2.8) gives none: every id is empty, and incarnations are not compared.
pub fn topic_ids(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>, TopicIdError> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()).map_err(|_| TopicIdError::Request(format!("topic {t:?} holds a NUL byte"))))
        .collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = consumer.client().native_ptr();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: see the module's header; each object is owned by a guard declared after what it
    // borrows from, so it is destroyed first.
    unsafe {
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len()),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS),
            destroy: rd::rd_kafka_AdminOptions_destroy,
        };
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(options.ptr, millis, errstr.as_mut_ptr(), errstr.len());
        let queue = Owned { ptr: rd::rd_kafka_queue_new(rk), destroy: rd::rd_kafka_queue_destroy };
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        let event =
            Owned { ptr: rd::rd_kafka_queue_poll(queue.ptr, millis + 1_000), destroy: rd::rd_kafka_event_destroy };
        if event.ptr.is_null() {
            return Err(TopicIdError::Timeout(timeout));
        }
        match rd::rd_kafka_event_error(event.ptr) {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE
            | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION => {
                return Ok(topics.iter().map(|t| (t.clone(), String::new())).collect());
            }
            _ => return Err(TopicIdError::Request(copied(rd::rd_kafka_event_error_string(event.ptr)))),
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            return Err(TopicIdError::Request("the answer is not a DescribeTopics result".into()));
        }
        let mut count = 0usize;
        let described = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        let mut ids = BTreeMap::new();
        for i in 0..count {
            let topic = *described.add(i);
            let name = copied(rd::rd_kafka_TopicDescription_name(topic));
            let error = rd::rd_kafka_TopicDescription_error(topic);
            if !error.is_null() && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(TopicIdError::Topic { topic: name, message: copied(rd::rd_kafka_error_string(error)) });
            }
            let uuid = rd::rd_kafka_TopicDescription_topic_id(topic);
            let id =
                if uuid.is_null() { String::new() } else { kafka_form(&copied(rd::rd_kafka_Uuid_base64str(uuid))) };
            ids.insert(name, id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_read_as_kafkas_tools_print_them() {
        assert_eq!(super::kafka_form("XvgLD19xRw+yRhqBq7o/gg=="), "XvgLD19xRw-yRhqBq7o_gg");
        assert_eq!(super::kafka_form("AAAAAAAAAAAAAAAAAAAAAA=="), "", "Kafka's zero id is no id");
    }
}
