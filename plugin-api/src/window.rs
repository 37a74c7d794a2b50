//! Event-time windows for plugins that aggregate: which windows an event belongs to (tumbling,
//! hopping, session), when a window closes, what happens to an event whose window has closed (a
//! policy, counted), dedup of repeated ids within a time span ([`Dedup`]), and a keyed join of
//! two inputs within a time span ([`Join`]).
//!
//! Time is event time (`Event::timestamp_ms`). The *watermark* is the highest event time seen.
//! A window `[start, end)` closes once the watermark reaches `end + allowed_lateness_ms`; an event
//! that arrives for a window that has closed is *late*.
//!
//! The state is in memory: keep one [`Windowed`] per partition (`assigned` / `revoked`), emit
//! what [`Windowed::close`] returns after each batch, and what [`Windowed::drain`] returns from
//! `flush` (the host commits offsets right after it, so nothing behind those aggregates is read
//! again). `plugins/windowed-count` is built this way.
//!
//! ```
//! use sluice_plugin_api::window::{Late, WindowKind, Windowed};
//!
//! // Counts per key in 1-minute windows; events up to 10 s late still count.
//! let mut w = Windowed::<String, u64>::new(WindowKind::Tumbling { size_ms: 60_000 }, 10_000, Late::Drop)?;
//! w.add("a".into(), 5_000, |n| *n += 1);
//! w.add("a".into(), 65_000, |n| *n += 1);
//! assert!(w.close().is_empty()); // the watermark (65 s) is short of 60 s + 10 s
//! w.add("b".into(), 71_000, |n| *n += 1);
//! let closed = w.close();
//! assert_eq!((closed[0].key.as_str(), closed[0].window.start, closed[0].value), ("a", 0, 1));
//! w.add("a".into(), 30_000, |n| *n += 1); // its window closed: late, dropped and counted
//! assert_eq!(w.late().dropped, 1);
//! # Ok::<(), String>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

mod stored;
pub use stored::{StoredWindows, WindowResult};

/// How event times map to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size_ms`, aligned to the epoch: each event is in exactly one.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `advance_ms` (sliding): an event is in
    /// `size_ms / advance_ms` of them (rounded up).
    Hopping {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts (at most `size_ms`).
        advance_ms: i64,
    },
    /// Per key, events less than `gap_ms` apart share a window; a window ends `gap_ms` after
    /// its last event. An event that bridges two sessions merges them.
    Session {
        /// Inactivity that ends a session.
        gap_ms: i64,
    },
}

impl WindowKind {
    /// The windows `ts` belongs to (for sessions: the one it opens on its own).
    pub fn windows_of(self, ts: i64) -> Vec<Window> {
        match self {
            WindowKind::Tumbling { size_ms } => {
                let start = ts - ts.rem_euclid(size_ms);
                vec![Window {
                    start,
                    end: start + size_ms,
                }]
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                let last = ts - ts.rem_euclid(advance_ms);
                let mut starts: Vec<i64> = (0..)
                    .map(|i| last - i * advance_ms)
                    .take_while(|s| *s > ts - size_ms)
                    .collect();
                starts.reverse();
                starts
                    .into_iter()
                    .map(|start| Window {
                        start,
                        end: start + size_ms,
                    })
                    .collect()
            }
            WindowKind::Session { gap_ms } => vec![Window {
                start: ts,
                end: ts.saturating_add(gap_ms),
            }],
        }
    }
}

/// One window, `[start, end)` in event-time milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First millisecond inside.
    pub start: i64,
    /// First millisecond after.
    pub end: i64,
}

/// What happens to an event whose window has already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Not aggregated; counted in [`LateCounts::dropped`].
    Drop,
    /// Aggregated into the window again, which closes at the next [`Windowed::close`] as another
    /// result for the same window (consumers sum them); counted in [`LateCounts::reopened`].
    Reopen,
}

/// Late events so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LateCounts {
    /// Dropped ([`Late::Drop`]).
    pub dropped: u64,
    /// Aggregated into a closed window again ([`Late::Reopen`]).
    pub reopened: u64,
}

/// Where [`Windowed::add`] put an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Into open windows.
    OnTime,
    /// Its window had closed: handled per the [`Late`] policy.
    Late,
}

/// A closed (or drained) window's aggregate for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed<K, A> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: A,
    /// `false` when drained before it closed ([`Windowed::drain`]).
    pub closed: bool,
}

/// Aggregates that two session windows can be merged into (sessions only; tumbling and hopping
/// windows never merge).
pub trait Merge {
    /// Folds `other` into `self`.
    fn merge(&mut self, other: Self);
}

impl Merge for u64 {
    fn merge(&mut self, other: Self) {
        *self += other;
    }
}

impl Merge for i64 {
    fn merge(&mut self, other: Self) {
        *self += other;
    }
}

impl Merge for f64 {
    fn merge(&mut self, other: Self) {
        *self += other;
    }
}

impl<T> Merge for Vec<T> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

/// Keyed aggregates over event-time windows, in memory.
#[derive(Debug, Clone)]
pub struct Windowed<K, A> {
    kind: WindowKind,
    lateness_ms: i64,
    late_policy: Late,
    watermark: Option<i64>,
    open: BTreeMap<(K, Window), A>,
    late: LateCounts,
}

impl<K: Ord + Clone, A: Default + Merge> Windowed<K, A> {
    /// Windows of `kind`; events up to `allowed_lateness_ms` behind the watermark still count;
    /// later ones go by `late`. `Err` names what is out of range.
    pub fn new(kind: WindowKind, allowed_lateness_ms: i64, late: Late) -> Result<Self, String> {
        match kind {
            WindowKind::Tumbling { size_ms } if size_ms <= 0 => {
                return Err(format!("window size {size_ms} ms: must be positive"));
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } if size_ms <= 0 || advance_ms <= 0 || advance_ms > size_ms => {
                return Err(format!(
                    "hopping windows of {size_ms} ms every {advance_ms} ms: both positive, the advance at most the size"
                ));
            }
            WindowKind::Session { gap_ms } if gap_ms <= 0 => {
                return Err(format!("session gap {gap_ms} ms: must be positive"));
            }
            _ => {}
        }
        if allowed_lateness_ms < 0 {
            return Err(format!(
                "allowed lateness {allowed_lateness_ms} ms: must not be negative"
            ));
        }
        Ok(Windowed {
            kind,
            lateness_ms: allowed_lateness_ms,
            late_policy: late,
            watermark: None,
            open: BTreeMap::new(),
            late: LateCounts::default(),
        })
    }

    /// The highest event time seen, if any.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Late events so far.
    pub fn late(&self) -> LateCounts {
        self.late
    }

    /// Open windows (all keys).
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn is_closed(&self, window: Window) -> bool {
        self.watermark
            .is_some_and(|w| window.end.saturating_add(self.lateness_ms) <= w)
    }

    /// Adds an event of `key` at event time `ts`: `update` runs on the aggregate of each window
    /// it belongs to (once per window). The watermark moves first, so an event far ahead closes
    /// windows behind it at the next [`Windowed::close`].
    pub fn add(&mut self, key: K, ts: i64, mut update: impl FnMut(&mut A)) -> Placed {
        let windows = self.windows_of(ts);
        // Late: every window of the event closed before it came (a hopping event with a window
        // still open is on time for that one; its closed ones were emitted already).
        let late = windows.iter().all(|w| self.is_closed(*w));
        self.watermark = Some(self.watermark.map_or(ts, |w| w.max(ts)));
        if late {
            match self.late_policy {
                Late::Drop => {
                    self.late.dropped += 1;
                    return Placed::Late;
                }
                Late::Reopen => self.late.reopened += 1,
            }
        }
        match self.kind {
            WindowKind::Session { gap_ms } => {
                let mut window = Window {
                    start: ts,
                    end: ts.saturating_add(gap_ms),
                };
                let mut value = A::default();
                // Merge every open session of this key that this event touches.
                let touching: Vec<Window> = self
                    .open
                    .keys()
                    .filter(|(k, w)| *k == key && w.start <= window.end && window.start <= w.end)
                    .map(|(_, w)| *w)
                    .collect();
                for w in touching {
                    if let Some(v) = self.open.remove(&(key.clone(), w)) {
                        value.merge(v);
                    }
                    window.start = window.start.min(w.start);
                    window.end = window.end.max(w.end);
                }
                update(&mut value);
                self.open.insert((key, window), value);
            }
            _ => {
                for w in windows {
                    if !late && self.is_closed(w) {
                        continue; // a closed hopping window of an on-time event
                    }
                    update(self.open.entry((key.clone(), w)).or_default());
                }
            }
        }
        if late { Placed::Late } else { Placed::OnTime }
    }

    /// The windows `ts` belongs to (for sessions: the one it opens on its own).
    pub fn windows_of(&self, ts: i64) -> Vec<Window> {
        self.kind.windows_of(ts)
    }

    /// Removes and returns the windows that have closed, by window end, then key.
    pub fn close(&mut self) -> Vec<Closed<K, A>> {
        let due: Vec<(K, Window)> = self
            .open
            .keys()
            .filter(|(_, w)| self.is_closed(*w))
            .cloned()
            .collect();
        self.take(due, true)
    }

    /// Removes and returns every open window (`flush`, `revoked`), marked not closed.
    pub fn drain(&mut self) -> Vec<Closed<K, A>> {
        let all: Vec<(K, Window)> = self.open.keys().cloned().collect();
        self.take(all, false)
    }

    fn take(&mut self, keys: Vec<(K, Window)>, closed: bool) -> Vec<Closed<K, A>> {
        let mut out: Vec<Closed<K, A>> = keys
            .into_iter()
            .filter_map(|(key, window)| {
                let value = self.open.remove(&(key.clone(), window))?;
                Some(Closed {
                    key,
                    window,
                    value,
                    closed,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.window.end, &a.key).cmp(&(b.window.end, &b.key)));
        out
    }
}

/// Remembers ids for `within_ms` of event time: [`Dedup::first`] is true for an id not seen in
/// the last `within_ms` (by the watermark, the highest event time seen).
#[derive(Debug, Clone)]
pub struct Dedup<K> {
    within_ms: i64,
    watermark: Option<i64>,
    /// Event time -> the ids first seen then.
    by_time: BTreeMap<i64, Vec<K>>,
    seen: HashSet<K>,
    duplicates: u64,
}

impl<K: Hash + Eq + Clone> Dedup<K> {
    /// Ids are remembered for `within_ms` of event time.
    pub fn new(within_ms: i64) -> Result<Self, String> {
        if within_ms <= 0 {
            return Err(format!("dedup span {within_ms} ms: must be positive"));
        }
        Ok(Dedup {
            within_ms,
            watermark: None,
            by_time: BTreeMap::new(),
            seen: HashSet::new(),
            duplicates: 0,
        })
    }

    /// Whether `id` at event time `ts` is new (not seen within the span); a repeat is counted.
    pub fn first(&mut self, id: K, ts: i64) -> bool {
        let watermark = self.watermark.map_or(ts, |w| w.max(ts));
        self.watermark = Some(watermark);
        // Forget what fell out of the span.
        let keep = self.by_time.split_off(&(watermark - self.within_ms));
        for ids in std::mem::replace(&mut self.by_time, keep).into_values() {
            for old in ids {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(&id) {
            self.duplicates += 1;
            return false;
        }
        self.seen.insert(id.clone());
        self.by_time.entry(ts).or_default().push(id);
        true
    }

    /// Repeats seen so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Which input of a [`Join`] an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first input (say, bookings).
    Left,
    /// The second input (say, payments).
    Right,
}

/// A keyed join of two inputs within a time span: an event matches every event of the other
/// side with the same key whose event time is at most `within_ms` away. Each pair is produced
/// once, by whichever of its two events comes second. Events are forgotten once the watermark
/// (the highest event time seen) is more than `within_ms` past them; one older than that when
/// it comes is late: matched with nothing and counted.
#[derive(Debug, Clone)]
pub struct Join<K, L, R> {
    within_ms: i64,
    watermark: Option<i64>,
    left: BTreeMap<K, Vec<(i64, L)>>,
    right: BTreeMap<K, Vec<(i64, R)>>,
    late: u64,
}

impl<K: Ord + Clone, L: Clone, R: Clone> Join<K, L, R> {
    /// Pairs events at most `within_ms` apart.
    pub fn new(within_ms: i64) -> Result<Self, String> {
        if within_ms < 0 {
            return Err(format!("join span {within_ms} ms: must not be negative"));
        }
        Ok(Join {
            within_ms,
            watermark: None,
            left: BTreeMap::new(),
            right: BTreeMap::new(),
            late: 0,
        })
    }

    /// Events that came too late to be matched.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Events waiting for a match (both sides).
    pub fn pending(&self) -> usize {
        self.left.values().map(Vec::len).sum::<usize>()
            + self.right.values().map(Vec::len).sum::<usize>()
    }

    /// A left event: the pairs it completes, `(left, right, right's time)`.
    pub fn left(&mut self, key: K, ts: i64, value: L) -> Vec<(L, R, i64)> {
        if !self.admit(ts) {
            return Vec::new();
        }
        let matches = Self::matching(&self.right, &key, ts, self.within_ms)
            .map(|(t, r)| (value.clone(), r.clone(), *t))
            .collect();
        self.left.entry(key).or_default().push((ts, value));
        self.expire();
        matches
    }

    /// A right event: the pairs it completes, `(left, right, left's time)`.
    pub fn right(&mut self, key: K, ts: i64, value: R) -> Vec<(L, R, i64)> {
        if !self.admit(ts) {
            return Vec::new();
        }
        let matches = Self::matching(&self.left, &key, ts, self.within_ms)
            .map(|(t, l)| (l.clone(), value.clone(), *t))
            .collect();
        self.right.entry(key).or_default().push((ts, value));
        self.expire();
        matches
    }

    fn matching<'a, V>(
        side: &'a BTreeMap<K, Vec<(i64, V)>>,
        key: &K,
        ts: i64,
        within_ms: i64,
    ) -> impl Iterator<Item = &'a (i64, V)> {
        side.get(key)
            .into_iter()
            .flatten()
            .filter(move |(t, _)| (t - ts).abs() <= within_ms)
    }

    /// Moves the watermark; false (and counted) for an event already forgotten on arrival.
    fn admit(&mut self, ts: i64) -> bool {
        if self
            .watermark
            .is_some_and(|w| ts < w.saturating_sub(self.within_ms))
        {
            self.late += 1;
            return false;
        }
        self.watermark = Some(self.watermark.map_or(ts, |w| w.max(ts)));
        true
    }

    fn expire(&mut self) {
        let Some(w) = self.watermark else { return };
        let horizon = w.saturating_sub(self.within_ms);
        self.left.retain(|_, events| {
            events.retain(|(t, _)| *t >= horizon);
            !events.is_empty()
        });
        self.right.retain(|_, events| {
            events.retain(|(t, _)| *t >= horizon);
            !events.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(closed: &[Closed<&'static str, u64>]) -> Vec<(&'static str, i64, i64, u64, bool)> {
        closed
            .iter()
            .map(|c| (c.key, c.window.start, c.window.end, c.value, c.closed))
            .collect()
    }

    #[test]
    fn tumbling_windows_close_after_their_lateness_and_late_events_follow_the_policy() {
        let mut w = Windowed::<&str, u64>::new(WindowKind::Tumbling { size_ms: 10 }, 5, Late::Drop)
            .unwrap();
        for (key, ts) in [("a", -1), ("a", 1), ("b", 9), ("a", 10)] {
            assert_eq!(w.add(key, ts, |n| *n += 1), Placed::OnTime);
        }
        // Watermark 10: [-10, 0) closed (0 + 5 <= 10), [0, 10) not yet (10 + 5 > 10).
        assert_eq!(counts(&w.close()), [("a", -10, 0, 1, true)]);
        w.add("b", 15, |n| *n += 1);
        assert_eq!(
            counts(&w.close()),
            [("a", 0, 10, 1, true), ("b", 0, 10, 1, true)]
        );
        // Late for a closed window: dropped and counted.
        assert_eq!(w.add("a", 3, |n| *n += 1), Placed::Late);
        assert_eq!(
            w.late(),
            LateCounts {
                dropped: 1,
                reopened: 0
            }
        );
        // Within the lateness of an open window: on time.
        assert_eq!(w.add("a", 11, |n| *n += 1), Placed::OnTime);
        assert_eq!(
            counts(&w.drain()),
            [("a", 10, 20, 2, false), ("b", 10, 20, 1, false)]
        );
        // Reopen: the late event is counted into its window again, emitted at the next close.
        let mut w =
            Windowed::<&str, u64>::new(WindowKind::Tumbling { size_ms: 10 }, 0, Late::Reopen)
                .unwrap();
        w.add("a", 1, |n| *n += 1);
        w.add("a", 20, |n| *n += 1);
        assert_eq!(counts(&w.close()), [("a", 0, 10, 1, true)]);
        assert_eq!(w.add("a", 2, |n| *n += 1), Placed::Late);
        assert_eq!(counts(&w.close()), [("a", 0, 10, 1, true)]);
        assert_eq!(w.late().reopened, 1);
    }

    #[test]
    fn hopping_windows_hold_each_event_size_over_advance_times() {
        let w = Windowed::<&str, u64>::new(
            WindowKind::Hopping {
                size_ms: 30,
                advance_ms: 10,
            },
            0,
            Late::Drop,
        )
        .unwrap();
        let starts: Vec<i64> = w.windows_of(25).iter().map(|w| w.start).collect();
        assert_eq!(starts, [0, 10, 20]);
        let starts: Vec<i64> = w.windows_of(-5).iter().map(|w| w.start).collect();
        assert_eq!(starts, [-30, -20, -10]);
        let mut w = w;
        for ts in [1, 12, 25] {
            w.add("k", ts, |n| *n += 1);
        }
        w.add("k", 60, |n| *n += 1);
        let closed: Vec<(i64, u64)> = w
            .close()
            .iter()
            .map(|c| (c.window.start, c.value))
            .collect();
        // Every window ending at or before the watermark (60) closed, each with its events.
        assert_eq!(closed, [(-20, 1), (-10, 2), (0, 3), (10, 2), (20, 1)]);
    }

    #[test]
    fn sessions_grow_merge_and_close_after_the_gap() {
        let mut w =
            Windowed::<&str, Vec<i64>>::new(WindowKind::Session { gap_ms: 10 }, 30, Late::Drop)
                .unwrap();
        // Out of order within the allowed lateness (30): 14 and 22 come after 38.
        for ts in [0, 5, 30, 38] {
            w.add("u", ts, |v| v.push(ts));
        }
        assert_eq!(w.open_windows(), 2);
        // 14 extends [0, 15) to [0, 24); 22 then bridges it and [30, 48): one session.
        w.add("u", 14, |v| v.push(14));
        assert_eq!(w.open_windows(), 2);
        w.add("u", 22, |v| v.push(22));
        assert_eq!(w.open_windows(), 1);
        w.add("other", 100, |v| v.push(100));
        let closed = w.close();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].window, Window { start: 0, end: 48 });
        let mut seen = closed[0].value.clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 5, 14, 22, 30, 38]);
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        assert!(
            Windowed::<u8, u64>::new(WindowKind::Tumbling { size_ms: 0 }, 0, Late::Drop)
                .unwrap_err()
                .contains("must be positive")
        );
        assert!(
            Windowed::<u8, u64>::new(
                WindowKind::Hopping {
                    size_ms: 10,
                    advance_ms: 20
                },
                0,
                Late::Drop
            )
            .unwrap_err()
            .contains("at most the size")
        );
        assert!(
            Windowed::<u8, u64>::new(WindowKind::Session { gap_ms: 5 }, -1, Late::Drop)
                .unwrap_err()
                .contains("must not be negative")
        );
        assert!(Dedup::<u8>::new(0).is_err());
    }

    #[test]
    fn a_join_pairs_each_match_once_within_the_span_in_either_order() {
        let mut j = Join::<&str, &str, u32>::new(60).unwrap();
        assert!(j.left("b-1", 100, "booking 1").is_empty());
        // A payment 30 ms later pairs with its booking; one for another booking waits.
        assert_eq!(j.right("b-1", 130, 25), [("booking 1", 25, 100)]);
        assert!(j.right("b-2", 140, 40).is_empty());
        // The booking that comes after its payment pairs too (the pair is made once).
        assert_eq!(j.left("b-2", 150, "booking 2"), [("booking 2", 40, 140)]);
        // Too far apart: no pair.
        assert!(j.right("b-1", 300, 5).is_empty());
        // The watermark (300) forgot everything before 240; an event from then is late.
        assert!(j.left("b-1", 200, "booking 1 again").is_empty());
        assert_eq!(j.late(), 1);
        assert_eq!(j.pending(), 1, "only the payment at 300 waits");
        assert!(Join::<u8, u8, u8>::new(-1).is_err());
    }

    #[test]
    fn dedup_forgets_ids_after_the_span() {
        let mut d = Dedup::new(100).unwrap();
        assert!(d.first("b-1", 0));
        assert!(!d.first("b-1", 50));
        assert!(d.first("b-2", 60));
        assert_eq!(d.duplicates(), 1);
        // At watermark 150, b-1 (seen at 0) is forgotten; b-2 (60) is still remembered.
        assert!(d.first("b-3", 150));
        assert!(d.first("b-1", 150));
        assert!(!d.first("b-2", 150));
        assert_eq!(d.len(), 3);
    }
}
