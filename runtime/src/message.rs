//! An event as a worker gets it: owned (a source's loop hands it to another thread), with its
//! topic name shared by every event of the partition and, for a file, its bytes shared with the
//! other lines of the batch they were read in. So an event costs one allocation for its bytes
//! from Kafka (librdkafka's buffer must be given back) and none from a file.

use std::ops::{Deref, Range};
use std::sync::Arc;

use rdkafka::Timestamp;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

/// Bytes owned by one event, or a range of a buffer shared by the events of one read.
#[derive(Debug, Clone)]
pub enum Bytes {
    /// The event's own copy.
    Own(Box<[u8]>),
    /// `range` of a buffer read once for several events.
    Shared(Arc<[u8]>, Range<usize>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Own(b) => b,
            Bytes::Shared(buf, range) => &buf[range.clone()],
        }
    }
}

/// One event a source read.
#[derive(Debug, Clone)]
pub struct Message {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: Option<OwnedHeaders>,
}

impl Message {
    /// An event of `topic` (shared by the partition's events).
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Timestamp,
        key: Option<Bytes>,
        payload: Option<Bytes>,
        headers: Option<OwnedHeaders>,
    ) -> Message {
        Message {
            topic,
            partition,
            offset,
            timestamp,
            key,
            payload,
            headers,
        }
    }

    /// Copies a polled Kafka message out of librdkafka's buffer; `topic` is its topic's name,
    /// shared (see [`TopicNames`]).
    pub fn from_kafka(m: &BorrowedMessage<'_>, topic: Arc<str>) -> Message {
        use rdkafka::Message as _;
        Message {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp(),
            key: m.key().map(|k| Bytes::Own(k.into())),
            payload: m.payload().map(|p| Bytes::Own(p.into())),
            headers: m.headers().map(|h| h.detach()),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether `other` is of the same topic and partition (the shared topic name is compared by
    /// address first).
    pub fn same_partition(&self, other: &Message) -> bool {
        self.partition == other.partition
            && (Arc::ptr_eq(&self.topic, &other.topic) || self.topic == other.topic)
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset (a file's line number - 1).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The headers.
    pub fn headers(&self) -> Option<&OwnedHeaders> {
        self.headers.as_ref()
    }
}

/// Topic names as shared strings, so that events do not each allocate theirs. A pipeline reads
/// a handful of topics: a linear search beats hashing here.
#[derive(Debug, Default)]
pub struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    /// The shared name for `topic`.
    pub fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.0.iter().find(|n| &***n == topic) {
            return name.clone();
        }
        let name: Arc<str> = topic.into();
        self.0.push(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_bytes_are_their_range_of_the_buffer() {
        let buf: Arc<[u8]> = Arc::from(&b"one\ntwo\n"[..]);
        let two = Bytes::Shared(buf.clone(), 4..7);
        assert_eq!(&*two, b"two");
        assert_eq!(&*Bytes::Own(b"x"[..].into()), b"x");
        let mut names = TopicNames::default();
        let a = names.get("bookings");
        assert!(Arc::ptr_eq(&a, &names.get("bookings")));
        assert_eq!(&*names.get("payments"), "payments");
    }
}
