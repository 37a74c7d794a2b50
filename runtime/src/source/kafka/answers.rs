//! Answers to asynchronous commits: a librdkafka queue of our own, through librdkafka's C API.
//! The one place the Kafka source goes below rdkafka's safe API (rdkafka offers no way to hear
//! back from an asynchronous commit); SAFETY notes inline.
#![allow(unsafe_code)]

use rdkafka::consumer::Consumer;

use super::consumer::{KafkaConsumer, tpl_of_commits};
use crate::offsets::TopicPartition;

/// The broker's answer to a commit.
#[derive(Debug)]
pub(crate) struct CommitAnswer {
    pub(crate) error: Option<String>,
}

/// A librdkafka queue of our own for the answers to asynchronous commits. librdkafka answers a
/// manual asynchronous commit only on a queue given with it (`rd_kafka_commit_queue`): plain
/// `rd_kafka_commit` under the event API (which rdkafka uses) drops the answer.
pub(crate) struct AnswerQueue(*mut rdkafka::bindings::rd_kafka_queue_t);

// SAFETY: a librdkafka queue may be used from any thread; this one is used by the poll thread.
unsafe impl Send for AnswerQueue {}

impl std::fmt::Debug for AnswerQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerQueue")
    }
}

impl AnswerQueue {
    pub(crate) fn new(consumer: &KafkaConsumer) -> AnswerQueue {
        // SAFETY: the client is alive; the queue is destroyed (Drop) before it (`close`).
        AnswerQueue(unsafe {
            rdkafka::bindings::rd_kafka_queue_new(consumer.client().native_ptr())
        })
    }

    /// Sends `commits`; the answer comes out of [`AnswerQueue::next`].
    pub(crate) fn commit(
        &self,
        consumer: &KafkaConsumer,
        commits: &[(TopicPartition, i64)],
    ) -> Result<(), String> {
        let tpl = tpl_of_commits(commits)?;
        // SAFETY: valid client, list and queue; librdkafka copies the list.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_commit_queue(
                consumer.client().native_ptr(),
                tpl.ptr(),
                self.0,
                None,
                std::ptr::null_mut(),
            )
        };
        match rdkafka::error::RDKafkaErrorCode::from(err) {
            rdkafka::error::RDKafkaErrorCode::NoError => Ok(()),
            code => Err(code.to_string()),
        }
    }

    /// The next answer, if one came.
    pub(crate) fn next(&self) -> Option<CommitAnswer> {
        use rdkafka::bindings as rd;
        loop {
            // SAFETY: a live queue; the event is destroyed below.
            let event = unsafe { rd::rd_kafka_queue_poll(self.0, 0) };
            if event.is_null() {
                return None;
            }
            // SAFETY: a live event, destroyed right after reading it.
            let (kind, err) = unsafe {
                (
                    rd::rd_kafka_event_type(event),
                    rd::rd_kafka_event_error(event),
                )
            };
            // SAFETY: the event came from `rd_kafka_queue_poll` and is destroyed once.
            unsafe { rd::rd_kafka_event_destroy(event) };
            if kind == rd::RD_KAFKA_EVENT_OFFSET_COMMIT {
                let error = match rdkafka::error::RDKafkaErrorCode::from(err) {
                    rdkafka::error::RDKafkaErrorCode::NoError => None,
                    code => Some(code.to_string()),
                };
                return Some(CommitAnswer { error });
            }
        }
    }
}

impl Drop for AnswerQueue {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.0) }
    }
}
