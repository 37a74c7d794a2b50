//! [`StoredWindows`]: tumbling and hopping windows kept in a host state store (ABI 1.2), so a
//! restart or a rebalance keeps them.
//!
//! Each window of each key is one store entry (`{"v": aggregate, "through": offset,
//! "closed_at": offset}`), the partition's watermark and late count one more. Every update
//! records the offset it applied: after a crash the host replays the events since the last
//! commit against state that already holds some of them, and those are recognised and not
//! aggregated twice. A window closed by events the commit did not cover yet is handed back for
//! emission once more after a restart, so its result reaches the output at least once and is
//! counted exactly once. A closed window stays in the store until the host says the close is
//! committed ([`StoredWindows::committed`], from [`Pipeline::committed`](crate::Pipeline::committed),
//! ABI 1.3): its result is delivered then, and no replay reaches it again. Deleting it sooner
//! could drop a result whose record a crash lost while the window's tombstone got through.
//!
//! Needs `ordering: partition` (one instance sees all of a partition's keys) and one store
//! declared in the spec (`state.stores`).

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Placed, Window, WindowKind};
use crate::abi::Event;
use crate::sdk::Output;
use crate::state::StateError;

/// One window's aggregate for a key, to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult<A> {
    /// The key.
    pub key: Vec<u8>,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: A,
    /// `false` for an open window's current value ([`StoredWindows::open_results`]).
    pub closed: bool,
}

/// A window's entry in the store.
#[derive(Debug, Serialize, Deserialize)]
struct Entry<A> {
    v: A,
    /// The highest source offset aggregated into it.
    through: i64,
    /// The offset of the last event of the batch that closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closed_at: Option<i64>,
}

/// The partition's entry in the store.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    watermark: Option<i64>,
    late: u64,
}

const META: &[u8] = b"m";

const WINDOW: u8 = b'w';

/// The store key of `key`'s window starting at `start`: `w`, the start (order-preserving), the key.
fn entry_key(start: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(WINDOW);
    k.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn parse_key(k: &[u8]) -> Option<(i64, &[u8])> {
    let (&tag, rest) = k.split_first()?;
    if tag != WINDOW || rest.len() < 8 {
        return None;
    }
    let (start, key) = rest.split_at(8);
    let start = (u64::from_be_bytes(start.try_into().ok()?) ^ (1 << 63)) as i64;
    Some((start, key))
}

/// What this instance knows of one partition's windows (the store has the rest).
#[derive(Debug, Default)]
struct Part {
    meta: Meta,
    meta_dirty: bool,
    /// Open windows by when they close: (end + lateness, start, key).
    open: BTreeSet<(i64, i64, Vec<u8>)>,
    /// Closed windows kept for re-emission until their close is committed: (the offset that
    /// closed it, start, key).
    closed: Vec<(i64, i64, Vec<u8>)>,
    /// Results to hand out at the next close: windows closed by events after the last commit.
    again: Vec<(i64, Vec<u8>)>,
}

/// Keyed aggregates over tumbling or hopping event-time windows, in a state store per input
/// partition. See the module documentation.
///
/// ```no_run
/// # use sluice_plugin_api::{Event, Error, Output, Record};
/// # use sluice_plugin_api::window::{StoredWindows, WindowKind};
/// # fn f(windows: &mut StoredWindows<u64>, events: &[Event<'_>], out: &mut Output<'_>) -> Result<(), Error> {
/// for event in events {
///     let ts = event.timestamp_ms().unwrap_or(0);
///     windows.add(out, event, event.key().unwrap_or_default(), ts, |n| *n += 1)?;
/// }
/// if let Some(last) = events.last() {
///     for result in windows.close(out, last.topic(), last.partition(), last.offset())? {
///         out.emit(Record::to("counts").key(&result.key).value(result.value.to_string().as_bytes()))?;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// And in [`Pipeline::committed`](crate::Pipeline::committed), so closed windows leave the store:
///
/// ```no_run
/// # use sluice_plugin_api::{Error, Output, Partition};
/// # use sluice_plugin_api::window::StoredWindows;
/// # fn f(windows: &mut StoredWindows<u64>, partition: &Partition<'_>, offset: i64, out: &mut Output<'_>) -> Result<(), Error> {
/// windows.committed(out, partition.topic(), partition.partition(), offset)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StoredWindows<A> {
    kind: WindowKind,
    lateness: i64,
    store: String,
    parts: HashMap<(String, i32), Part>,
    _aggregate: PhantomData<A>,
}

impl<A: Serialize + DeserializeOwned + Default> StoredWindows<A> {
    /// Windows of `kind` (tumbling or hopping) kept in state store `store`; a window closes once
    /// the partition's watermark reaches its end plus `allowed_lateness_ms`, and an event for a
    /// closed window is late: dropped and counted ([`StoredWindows::late`]).
    pub fn new(kind: WindowKind, allowed_lateness_ms: i64, store: &str) -> Result<Self, String> {
        match kind {
            WindowKind::Tumbling { size_ms } if size_ms > 0 => {}
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } if size_ms > 0 && advance_ms > 0 && advance_ms <= size_ms => {}
            WindowKind::Session { .. } => {
                return Err("stored windows are tumbling or hopping: session windows merge, keep them in memory with `Windowed`".into());
            }
            _ => return Err("window sizes must be positive, and a hop at most the size".into()),
        }
        if allowed_lateness_ms < 0 {
            return Err("allowed lateness must not be negative".into());
        }
        Ok(StoredWindows {
            kind,
            lateness: allowed_lateness_ms,
            store: store.to_owned(),
            parts: HashMap::new(),
            _aggregate: PhantomData,
        })
    }

    fn size(&self) -> i64 {
        match self.kind {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => size_ms,
            WindowKind::Session { gap_ms } => gap_ms,
        }
    }

    /// The partition's index, read from the store on first use: `first` is the first offset
    /// this instance sees of it (where the host resumed), so windows closed at or after it are
    /// handed out again.
    fn part(
        &mut self,
        out: &mut Output<'_>,
        topic: &str,
        partition: i32,
        first: i64,
    ) -> Result<&mut Part, StateError> {
        let id = (topic.to_owned(), partition);
        if !self.parts.contains_key(&id) {
            let mut part = Part::default();
            let mut store = out.store(&self.store, topic, partition);
            part.meta = store.get_json(META)?.unwrap_or_default();
            let mut entries = Vec::new();
            store.scan(&[WINDOW], |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                true
            })?;
            let (size, lateness) = (self.size(), self.lateness);
            for (k, v) in entries {
                let Some((start, key)) = parse_key(&k) else {
                    continue;
                };
                let entry: Entry<serde::de::IgnoredAny> =
                    serde_json::from_slice(&v).map_err(|e| StateError::decode(&self.store, e))?;
                match entry.closed_at {
                    None => {
                        part.open
                            .insert((start + size + lateness, start, key.to_vec()));
                    }
                    Some(at) => {
                        if at >= first {
                            part.again.push((start, key.to_vec()));
                        }
                        part.closed.push((at, start, key.to_vec()));
                    }
                }
            }
            self.parts.insert(id.clone(), part);
        }
        Ok(self.parts.get_mut(&id).expect("inserted above"))
    }

    /// Aggregates `event` (time `ts`) into `key`'s windows with `update`. An event the store
    /// already holds (a replay after a crash) changes nothing; one whose window closed is late.
    pub fn add(
        &mut self,
        out: &mut Output<'_>,
        event: &Event<'_>,
        key: &[u8],
        ts: i64,
        mut update: impl FnMut(&mut A),
    ) -> Result<Placed, StateError> {
        let (topic, partition, offset) = (event.topic(), event.partition(), event.offset());
        let (size, lateness, kind) = (self.size(), self.lateness, self.kind);
        let store_name = self.store.clone();
        let part = self.part(out, topic, partition, offset)?;
        if part.meta.watermark.is_none_or(|w| ts > w) {
            part.meta.watermark = Some(ts);
            part.meta_dirty = true;
        }
        let watermark = part.meta.watermark.unwrap_or(ts);
        let mut store = out.store(&store_name, topic, partition);
        let mut late = false;
        for window in kind.windows_of(ts) {
            let k = entry_key(window.start, key);
            let entry: Option<Entry<A>> = store.get_json(&k)?;
            let mut entry = match entry {
                Some(e) if e.through >= offset => continue, // a replay: already aggregated
                Some(e) if e.closed_at.is_some() => {
                    late = true;
                    continue;
                }
                Some(e) => e,
                None if window.end + lateness <= watermark => {
                    late = true;
                    continue;
                }
                None => {
                    part.open
                        .insert((window.start + size + lateness, window.start, key.to_vec()));
                    Entry {
                        v: A::default(),
                        through: offset,
                        closed_at: None,
                    }
                }
            };
            update(&mut entry.v);
            entry.through = offset;
            store.put_json(&k, &entry)?;
        }
        if late {
            part.meta.late += 1;
            part.meta_dirty = true;
            return Ok(Placed::Late);
        }
        Ok(Placed::OnTime)
    }

    /// Closes the windows of `topic`/`partition` the watermark has passed, after a batch whose
    /// last event is at `offset`; returns them (and, after a restart, the windows closed by
    /// events the host had not committed), by window end, for the plugin to emit.
    pub fn close(
        &mut self,
        out: &mut Output<'_>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Vec<WindowResult<A>>, StateError> {
        let id = (topic.to_owned(), partition);
        let (size, store_name) = (self.size(), self.store.clone());
        let Some(part) = self.parts.get_mut(&id) else {
            return Ok(Vec::new());
        };
        let mut store = out.store(&store_name, topic, partition);
        let mut results = Vec::new();
        for (start, key) in std::mem::take(&mut part.again) {
            if let Some(entry) = store.get_json::<Entry<A>>(&entry_key(start, &key))? {
                results.push(result(key, start, size, entry.v, true));
            }
        }
        let watermark = part.meta.watermark.unwrap_or(i64::MIN);
        while let Some(first) = part.open.first() {
            if first.0 > watermark {
                break;
            }
            let (_, start, key) = part.open.pop_first().expect("non-empty");
            let k = entry_key(start, &key);
            let Some(mut entry) = store.get_json::<Entry<A>>(&k)? else {
                continue;
            };
            entry.closed_at = Some(offset);
            store.put_json(&k, &entry)?;
            part.closed.push((offset, start, key.clone()));
            results.push(result(key, start, size, entry.v, true));
        }
        if part.meta_dirty {
            store.put_json(META, &part.meta)?;
            part.meta_dirty = false;
        }
        Ok(results)
    }

    /// The current value of every open window of `topic`/`partition` (`closed: false`), e.g.
    /// from `revoked` to show where the counts stood; the store keeps them.
    pub fn open_results(
        &mut self,
        out: &mut Output<'_>,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<WindowResult<A>>, StateError> {
        let size = self.size();
        let Some(part) = self.parts.get(&(topic.to_owned(), partition)) else {
            return Ok(Vec::new());
        };
        let mut store = out.store(&self.store, topic, partition);
        let mut results = Vec::new();
        for (_, start, key) in &part.open {
            if let Some(entry) = store.get_json::<Entry<A>>(&entry_key(*start, key))? {
                results.push(result(key.clone(), *start, size, entry.v, false));
            }
        }
        Ok(results)
    }

    /// Call from [`Pipeline::committed`](crate::Pipeline::committed): the windows of
    /// `topic`/`partition` closed by events before `offset` (the committed offset) are deleted
    /// from the store. Their results were emitted on behalf of those events, so the commit
    /// means they were delivered, and no replay reaches those events again.
    pub fn committed(
        &mut self,
        out: &mut Output<'_>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), StateError> {
        let Some(part) = self.parts.get_mut(&(topic.to_owned(), partition)) else {
            return Ok(()); // not read yet: its closed windows go at a later commit
        };
        if !part.closed.iter().any(|(at, _, _)| *at < offset) {
            return Ok(());
        }
        let mut store = out.store(&self.store, topic, partition);
        let mut kept = Vec::new();
        for closed in std::mem::take(&mut part.closed) {
            if closed.0 < offset {
                store.delete(&entry_key(closed.1, &closed.2))?;
            } else {
                kept.push(closed);
            }
        }
        part.closed = kept;
        Ok(())
    }

    /// Closed windows held for re-emission (their close not committed yet), over all
    /// partitions this instance has read.
    pub fn closed_held(&self) -> usize {
        self.parts.values().map(|p| p.closed.len()).sum()
    }

    /// Nothing to do at a flush since ABI 1.3: closed windows leave the store at
    /// [`StoredWindows::committed`].
    #[deprecated(
        since = "1.3.0",
        note = "call StoredWindows::committed from Pipeline::committed: closed windows go once their close is committed"
    )]
    pub fn flush(&mut self, _out: &mut Output<'_>) -> Result<(), StateError> {
        Ok(())
    }

    /// Forgets what this instance knows of a revoked partition (the store keeps it all).
    pub fn revoked(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_owned(), partition));
    }

    /// Late events of `topic`/`partition` so far (kept in the store).
    pub fn late(&self, topic: &str, partition: i32) -> u64 {
        self.parts
            .get(&(topic.to_owned(), partition))
            .map_or(0, |p| p.meta.late)
    }

    /// The watermark of `topic`/`partition`, once this instance has seen it.
    pub fn watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.parts
            .get(&(topic.to_owned(), partition))
            .and_then(|p| p.meta.watermark)
    }
}

fn result<A>(key: Vec<u8>, start: i64, size: i64, value: A, closed: bool) -> WindowResult<A> {
    WindowResult {
        key,
        window: Window {
            start,
            end: start + size,
        },
        value,
        closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_by_start_and_round_trip() {
        let a = entry_key(-5, b"k");
        let b = entry_key(0, b"k");
        let c = entry_key(1_000, b"a");
        assert!(a < b && b < c);
        assert_eq!(parse_key(&c), Some((1_000, &b"a"[..])));
        assert_eq!(parse_key(&a), Some((-5, &b"k"[..])));
        assert_eq!(parse_key(META), None);
    }
}
