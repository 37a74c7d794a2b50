//! Keyed state stores (ABI 1.2): per assigned input partition, the spec's named stores
//! (`state.stores`), each a table of one local redb file, written through to a compacted
//! changelog topic.
//!
//! - **Writes** (`put`, `delete`) go to a per-partition write buffer, applied to redb in one
//!   transaction every [`APPLY_EVERY`] writes and when the partition closes, and to the
//!   changelog through the pipeline's producer on behalf of the call's offset units
//!   (`worker::Emitter`): a unit completes, and its offset is committed, only after its changelog
//!   records are acknowledged. With Kafka transactions they are in the transaction.
//! - **Reads** see the buffer first, then redb.
//! - **Restore** (`changelog::restore`) runs on assignment, before the partition has a slot:
//!   from the local checkpoint when the local copy is current, from the beginning otherwise.
//!   A partition that starts from `start-from` (a rewind, or no committed offset) is reset to
//!   empty first: tombstones for every key, so no restored state is ahead of the input.
//! - **Close** (revoke, stop): the buffer goes to disk (durably) and, when everything the
//!   partition emitted was acknowledged, a checkpoint records the changelog's end. Opening a
//!   partition removes its checkpoint, so after a crash the local copy is not trusted.
//!
//! With a file source there is no changelog: the stores start empty every run (the file is read
//! from its first line), in a directory of their own.

pub(crate) mod changelog;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use prometheus::IntCounter;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::offsets::TopicPartition;
use crate::sink::kafka::KafkaSink;
use crate::sync::lock;
use crate::telemetry::Telemetry;

pub(crate) use changelog::Changelog;

/// Buffered writes applied to redb in one transaction.
const APPLY_EVERY: usize = 4096;

/// Every this many applies, one is durable. redb (4.6) reuses a page a non-durable commit freed
/// only when no durable commit holds it: the pages of the last durable commit (the restore's
/// local copy, or the one the last close left) stay until the next one, so without durable
/// applies a partition whose keys move on (windows that close) holds two copies of its state
/// on disk until it closes (measured: twice the file). A durable apply is one fsync per
/// `APPLY_EVERY * DURABLE_EVERY` writes.
const DURABLE_EVERY: u32 = 8;

/// Entries of redb a scan reads at a time: a scan holds at most this many (plus the buffered
/// writes among them) in memory, whatever the store's size.
const SCAN_PAGE: usize = 256;

/// What a cancelled restore returns (its partitions were revoked while it ran).
pub(crate) const RESTORE_CANCELLED: &str = "state: restore cancelled: the partitions were revoked";

/// The checkpoint file of a partition's directory: `{"store": next changelog offset}`.
const CHECKPOINT: &str = "checkpoint.json";
/// The redb file of a partition's directory.
const DB_FILE: &str = "state.redb";

type Table<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A store's buffered writes: key -> value, `None` a delete.
type Buffer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One input partition's stores: a redb file and the writes not yet in it.
struct Local {
    tp: TopicPartition,
    dir: PathBuf,
    db: Database,
    /// Per store (index into `StateStores::names`).
    buffers: Vec<Buffer>,
    buffered: usize,
    /// Applies since the last durable one.
    since_durable: u32,
    /// Per store: the changelog topic (`None` without a changelog).
    changelogs: Vec<Option<Arc<str>>>,
}

impl Local {
    /// Applies the buffered writes in one redb transaction, durably when asked or when
    /// [`DURABLE_EVERY`] applies were not.
    fn apply(&mut self, names: &[String], durability: Durability) -> Result<(), redb::Error> {
        if self.buffered == 0 && matches!(durability, Durability::None) {
            return Ok(());
        }
        let durability = if self.since_durable + 1 >= DURABLE_EVERY {
            Durability::Immediate
        } else {
            durability
        };
        self.since_durable = match durability {
            Durability::None => self.since_durable + 1,
            _ => 0,
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)
            .map_err(|e| redb::Error::from(redb::StorageError::Io(std::io::Error::other(e))))?;
        for (name, buffer) in names.iter().zip(&mut self.buffers) {
            if buffer.is_empty() {
                continue;
            }
            let mut table = txn.open_table(Table::new(name))?;
            for (key, value) in std::mem::take(buffer) {
                match value {
                    Some(value) => table.insert(key.as_slice(), value.as_slice())?,
                    None => table.remove(key.as_slice())?,
                };
            }
        }
        txn.commit()?;
        self.buffered = 0;
        Ok(())
    }

    /// Empties a store's table (its buffer is the caller's).
    fn clear(&mut self, name: &str) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.delete_table(Table::new(name))?;
        txn.commit()?;
        Ok(())
    }

    fn get(&self, store: usize, name: &str, key: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        out.clear();
        if let Some(buffered) = self.buffers[store].get(key) {
            return Ok(match buffered {
                Some(value) => {
                    out.extend_from_slice(value);
                    true
                }
                None => false,
            });
        }
        let read = self.db.begin_read().map_err(|e| self.io(name, e))?;
        let table = match read.open_table(Table::new(name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(self.io(name, e)),
        };
        match table.get(key).map_err(|e| self.io(name, e))? {
            Some(value) => {
                out.extend_from_slice(value.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One page of a scan: up to [`SCAN_PAGE`] entries of redb whose key starts with `prefix`
    /// and comes after `after`, with the buffered writes over the same keys, in key order
    /// (`None`: deleted in the buffer). The scan goes on after the page's last key while
    /// `more`: redb had more entries than a page.
    fn page(
        &self,
        store: usize,
        name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<(Buffer, bool), String> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let from = match after {
            Some(key) => Excluded(key),
            None => Included(prefix),
        };
        let mut page = Buffer::new();
        let mut more = false;
        let read = self.db.begin_read().map_err(|e| self.io(name, e))?;
        match read.open_table(Table::new(name)) {
            Ok(table) => {
                for entry in table
                    .range::<&[u8]>((from, Unbounded))
                    .map_err(|e| self.io(name, e))?
                {
                    let (key, value) = entry.map_err(|e| self.io(name, e))?;
                    if !key.value().starts_with(prefix) {
                        break;
                    }
                    if page.len() == SCAN_PAGE {
                        more = true;
                        break;
                    }
                    page.insert(key.value().to_vec(), Some(value.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.io(name, e)),
        }
        // Buffered keys up to the page's last one (those beyond it come with the next page's
        // redb keys), or all of them when redb has no more.
        let last = page.keys().next_back().cloned().filter(|_| more);
        let buffered = self.buffers[store].range::<[u8], _>((from, Unbounded));
        for (key, value) in buffered {
            if !key.starts_with(prefix) || last.as_ref().is_some_and(|last| key > last) {
                break;
            }
            page.insert(key.clone(), value.clone());
        }
        Ok((page, more))
    }

    fn io(&self, store: &str, err: impl std::fmt::Display) -> String {
        format!(
            "state store `{store}` of {}: {err} (local copy in {})",
            self.tp,
            self.dir.display()
        )
    }
}

/// The pipeline's state stores: what workers call during plugin calls, and what the source's
/// loop opens on assignment and closes on revoke.
pub struct StateStores {
    names: Vec<String>,
    dir: PathBuf,
    changelog: Option<Changelog>,
    /// Open partitions (a short list: scanned, compared by partition number first).
    open: RwLock<Vec<(TopicPartition, Arc<Mutex<Local>>)>>,
    /// Per store: `sluice_state_writes_total`.
    writes: Vec<IntCounter>,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for StateStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStores")
            .field("names", &self.names)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for StateStores {
    fn drop(&mut self) {
        if self.changelog.is_none() {
            // A run's own stores (no changelog): nothing in them outlives the run.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl StateStores {
    /// Stores under `dir`, backed by `changelog` (Kafka source) or none (a file or a replay:
    /// `dir` is the run's own, emptied first and removed at the end).
    pub(crate) fn new(
        names: Vec<String>,
        dir: PathBuf,
        changelog: Option<Changelog>,
        telemetry: Arc<Telemetry>,
    ) -> Result<StateStores, String> {
        if changelog.is_none() && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                format!(
                    "state.dir: cannot empty {} for this run: {e}",
                    dir.display()
                )
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "state.dir: cannot create {}: {e}: set `state.dir` or SLUICE_STATE_DIR to a writable directory",
                dir.display()
            )
        })?;
        let writes = names
            .iter()
            .map(|n| telemetry.metrics.state_writes.with_label_values(&[n]))
            .collect();
        Ok(StateStores {
            names,
            dir,
            changelog,
            open: RwLock::new(Vec::new()),
            writes,
            telemetry,
        })
    }

    /// The store names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The producer changelog records go through (none for a file source).
    pub(crate) fn sink(&self) -> Option<&Arc<KafkaSink>> {
        self.changelog.as_ref().and_then(Changelog::sink)
    }

    fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.dir.join(&tp.topic).join(tp.partition.to_string())
    }

    fn store_index(&self, store: &str) -> Result<usize, String> {
        self.names.iter().position(|n| n == store).ok_or_else(|| {
            format!(
                "the plugin used state store `{store}`, which the spec does not declare: add it to `state.stores` (declared: {})",
                self.names.join(", ")
            )
        })
    }

    fn local(&self, (topic, partition): (&str, i32)) -> Result<Arc<Mutex<Local>>, String> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .find(|(tp, _)| tp.partition == partition && tp.topic == topic)
            .map(|(_, local)| local.clone())
            .ok_or_else(|| {
                format!("state of {topic}/{partition}: the partition is not assigned to this pod (state is per input partition: use the partition of the event at hand)")
            })
    }

    /// Reads `key` of `store` into `out`.
    pub(crate) fn get(
        &self,
        tp: (&str, i32),
        store: &str,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let index = self.store_index(store)?;
        let local = self.local(tp)?;
        let local = lock(&local);
        local.get(index, store, key, out)
    }

    /// Writes `key` of `store` locally; returns the changelog topic the record goes to (its
    /// partition is the input partition's), `None` without a changelog.
    pub(crate) fn put(
        &self,
        tp: (&str, i32),
        store: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Arc<str>>, String> {
        let index = self.store_index(store)?;
        let local = self.local(tp)?;
        let mut local = lock(&local);
        local.buffers[index].insert(key.to_vec(), value.map(<[u8]>::to_vec));
        local.buffered += 1;
        if local.buffered >= APPLY_EVERY {
            local
                .apply(&self.names, Durability::None)
                .map_err(|e| local.io(store, e))?;
        }
        self.writes[index].inc();
        Ok(local.changelogs[index].clone())
    }

    /// Visits the entries of `store` whose key starts with `prefix`.
    pub(crate) fn scan(
        &self,
        tp: (&str, i32),
        store: &str,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        let index = self.store_index(store)?;
        let local = self.local(tp)?;
        // A page at a time: the plugin's visitor runs without the partition's lock held (it may
        // read and write the store), and memory stays bounded by a page. Writes the visitor
        // makes to keys the scan has not reached yet are seen.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = lock(&local).page(index, store, prefix, after.as_deref())?;
            after = page.keys().next_back().cloned();
            for (key, value) in page {
                if let Some(value) = value {
                    if !visit(&key, &value) {
                        return Ok(());
                    }
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Whether opening a partition reads a changelog (a Kafka source's stores): then the
    /// dispatcher restores off the poll thread.
    pub(crate) fn has_changelog(&self) -> bool {
        self.changelog.is_some()
    }

    /// Opens newly assigned partitions: restores each from its changelog (resetting those in
    /// `fresh` to empty first, `why` says why) before any of their events is processed. Once
    /// `cancel` is set (the partitions were revoked meanwhile) the restore stops with
    /// [`RESTORE_CANCELLED`] and none of them is opened.
    pub(crate) fn open(
        &self,
        partitions: &[TopicPartition],
        fresh: &HashSet<TopicPartition>,
        why: &str,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        let mut opened = Vec::new();
        for tp in partitions {
            if self.is_open(tp) {
                continue;
            }
            let dir = self.partition_dir(tp);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("state: cannot create {}: {e}", dir.display()))?;
            // Trusted only until this run writes to it: a crash leaves no checkpoint. A reset
            // reads the whole changelog, to delete every key it holds.
            let checkpoint = read_checkpoint(&dir).filter(|_| !fresh.contains(tp));
            let _ = std::fs::remove_file(dir.join(CHECKPOINT));
            let db_path = dir.join(DB_FILE);
            if checkpoint.is_none() {
                remove_file(&db_path)?;
            }
            let db = Database::create(&db_path)
                .or_else(|_| {
                    // A local copy redb cannot open is rebuilt from the changelog.
                    remove_file(&db_path)?;
                    Database::create(&db_path).map_err(|e| e.to_string())
                })
                .map_err(|e| format!("state: cannot open {}: {e}", db_path.display()))?;
            let changelogs = self
                .names
                .iter()
                .map(|store| {
                    self.changelog
                        .as_ref()
                        .map(|c| Arc::from(c.topic(&tp.topic, store)))
                })
                .collect();
            let local = Local {
                tp: tp.clone(),
                dir,
                db,
                buffers: vec![Buffer::new(); self.names.len()],
                buffered: 0,
                since_durable: 0,
                changelogs,
            };
            opened.push((local, checkpoint.unwrap_or_default()));
        }
        if let Some(changelog) = &self.changelog {
            changelog.restore(&self.names, &mut opened, &self.telemetry, cancel)?;
            for (local, _) in &mut opened {
                if fresh.contains(&local.tp) {
                    changelog.reset(&self.names, local, why, &self.telemetry)?;
                }
            }
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        for (local, _) in opened {
            open.push((local.tp.clone(), Arc::new(Mutex::new(local))));
        }
        Ok(())
    }

    fn is_open(&self, tp: &TopicPartition) -> bool {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.iter().any(|(t, _)| t == tp)
    }

    /// Closes `partitions` (revoke, stop): their buffers go to disk durably, and when
    /// `acknowledged` (everything they emitted, changelog records included, was delivered) a
    /// checkpoint records where their changelogs end, so the next owner on this disk reads
    /// only what came after.
    pub(crate) fn close(&self, partitions: &[TopicPartition], acknowledged: bool) {
        let closing: Vec<Arc<Mutex<Local>>> = {
            let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
            let (closing, keep) = std::mem::take(&mut *open)
                .into_iter()
                .partition(|(tp, _)| partitions.contains(tp));
            *open = keep;
            closing.into_iter().map(|(_, local)| local).collect()
        };
        for local in closing {
            let mut local = lock(&local);
            if let Err(err) = local.apply(&self.names, Durability::Immediate) {
                tracing::warn!(partition = %local.tp, "state: cannot write the local copy ({err}): the next owner restores from the changelog");
                continue;
            }
            if !acknowledged {
                continue;
            }
            let ends = match &self.changelog {
                Some(changelog) => match changelog.ends(&self.names, &local.tp) {
                    Ok(ends) => ends,
                    Err(err) => {
                        tracing::warn!(partition = %local.tp, "state: no checkpoint ({err}): the next owner restores from the beginning");
                        continue;
                    }
                },
                None => continue,
            };
            let text = serde_json::to_string(&ends).unwrap_or_default();
            if let Err(err) = std::fs::write(local.dir.join(CHECKPOINT), text) {
                tracing::warn!(partition = %local.tp, "state: cannot write the checkpoint: {err}");
            }
        }
    }
}

/// A checkpoint: per store, the changelog offset the local copy is current up to.
fn read_checkpoint(dir: &Path) -> Option<BTreeMap<String, i64>> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT)).ok()?;
    serde_json::from_str(&text).ok()
}

fn remove_file(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("state: cannot remove {}: {e}", path.display())),
    }
}

/// One entry of `sluice state dump`.
#[derive(Debug, serde::Serialize)]
pub struct DumpEntry<'a> {
    /// The input partition, `topic/partition`.
    pub partition: String,
    /// The store.
    pub store: &'a str,
    /// The key as text (invalid UTF-8 replaced; `key_hex` has the bytes).
    pub key: String,
    /// The key's bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hex: Option<String>,
    /// The value as text (invalid UTF-8 replaced; `value_hex` has the bytes).
    pub value: String,
    /// The value's bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

fn text_and_hex(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

/// `sluice state dump`: restores the stores of `partitions` (all partitions of the spec's
/// topics when empty) into `dir` (the spec's `state.dir` when `None`) from their changelogs,
/// as a pod would on assignment, and hands every entry to `each`, in store and key order.
/// Leaves a checkpoint, so a pod starting on `dir` reads only what comes after.
pub fn dump(
    spec: &crate::config::PipelineSpec,
    dir: Option<PathBuf>,
    partitions: &[TopicPartition],
    mut each: impl FnMut(DumpEntry<'_>),
) -> Result<(), String> {
    use crate::config::SourceSpec;
    let (Some(state), SourceSpec::Kafka(kafka)) = (&spec.state, &spec.source) else {
        return Err(format!(
            "{}: state dump needs a spec with `state` and `source: kafka` (state of a file run lives only as long as the run)",
            spec.file.display()
        ));
    };
    let dir = dir.or_else(|| spec.state_dir()).unwrap_or_default();
    let endpoint = crate::kafka_client::Endpoint::of(spec, crate::kafka_client::Connection::Source)
        .ok_or("state dump needs a spec with `source: kafka`")?;
    let config = endpoint.config().map_err(|e| e.to_string())?;
    let changelog = Changelog::new(&kafka.group_id, config, None, endpoint.identity())?;
    let partitions = if partitions.is_empty() {
        changelog.partitions_of(&kafka.topics)?
    } else {
        partitions.to_vec()
    };
    let telemetry = Arc::new(Telemetry::new(
        &spec.name,
        false,
        std::time::Duration::from_secs(60),
    ));
    let stores = StateStores::new(state.stores.clone(), dir, Some(changelog), telemetry)?;
    stores.open(&partitions, &HashSet::new(), "", &AtomicBool::new(false))?;
    let result = (|| {
        for tp in &partitions {
            for store in &state.stores {
                stores.scan((&tp.topic, tp.partition), store, b"", &mut |k, v| {
                    let (key, key_hex) = text_and_hex(k);
                    let (value, value_hex) = text_and_hex(v);
                    each(DumpEntry {
                        partition: tp.to_string(),
                        store,
                        key,
                        key_hex,
                        value,
                        value_hex,
                    });
                    true
                })?;
            }
        }
        Ok(())
    })();
    stores.close(&partitions, result.is_ok());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(dir: &Path) -> (StateStores, TopicPartition) {
        let telemetry = Arc::new(Telemetry::new(
            "test",
            false,
            std::time::Duration::from_secs(60),
        ));
        let stores =
            StateStores::new(vec!["s".into()], dir.join("state"), None, telemetry).unwrap();
        let tp = TopicPartition::new("in", 0);
        stores
            .open(
                std::slice::from_ref(&tp),
                &HashSet::new(),
                "",
                &AtomicBool::new(false),
            )
            .unwrap();
        (stores, tp)
    }

    fn file_size(stores: &StateStores, tp: &TopicPartition) -> u64 {
        std::fs::metadata(stores.partition_dir(tp).join(DB_FILE))
            .unwrap()
            .len()
    }

    /// A long-lived partition whose keys move on (a window's keys written, the last one's
    /// deleted): once a durable commit holds pages, only later durable commits let redb reuse
    /// them. Without them the file doubles (`DURABLE_EVERY = u32::MAX`: 4.5 MB to 8.9 MB).
    #[test]
    fn a_partition_that_keeps_overwriting_keeps_its_file_bounded() {
        const ROUNDS: u32 = 15;
        const KEYS: u32 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let (stores, tp) = stores(dir.path());
        let value = [7u8; 100];
        let write_all = |round: u32| {
            // Windows that close: each round's keys are new, the last round's are deleted.
            for key in 0..KEYS {
                let mut v = value.to_vec();
                v[..4].copy_from_slice(&round.to_be_bytes());
                let new = (round * KEYS + key).to_be_bytes();
                stores.put(("in", 0), "s", &new, Some(&v)).unwrap();
                if round > 0 {
                    let old = ((round - 1) * KEYS + key).to_be_bytes();
                    stores.put(("in", 0), "s", &old, None).unwrap();
                }
            }
        };
        write_all(0);
        // What a restore or a close leaves: the state on disk durably.
        lock(&stores.local(("in", 0)).unwrap())
            .apply(&stores.names, Durability::Immediate)
            .unwrap();
        let live = file_size(&stores, &tp);
        for round in 1..=ROUNDS {
            write_all(round);
        }
        let grown = file_size(&stores, &tp);
        assert!(
            grown < live * 3 / 2,
            "the file grew from {live} to {grown} bytes over {ROUNDS} rounds of {KEYS} new keys and {KEYS} deletes"
        );
        let mut out = Vec::new();
        assert!(
            stores
                .get(("in", 0), "s", &(ROUNDS * KEYS + 7).to_be_bytes(), &mut out)
                .unwrap()
        );
        assert_eq!(out[..4], ROUNDS.to_be_bytes());
        stores.close(&[tp], true);
    }

    /// A scan reads redb a page at a time, merges the buffered writes of each page's range
    /// (deletes hide keys, new keys appear in order), and lets the visitor write to the store.
    #[test]
    fn a_scan_streams_pages_merged_with_buffered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, tp) = stores(dir.path());
        let key = |i: u32| format!("k/{i:05}").into_bytes();
        let n = (SCAN_PAGE * 3 + 17) as u32;
        for i in 0..n {
            stores.put(("in", 0), "s", &key(i), Some(b"disk")).unwrap();
        }
        stores.put(("in", 0), "s", b"other", Some(b"x")).unwrap();
        lock(&stores.local(("in", 0)).unwrap())
            .apply(&stores.names, Durability::None)
            .unwrap();
        // Buffered: every 10th key deleted, odd keys past the end and between pages added.
        for i in (0..n).step_by(10) {
            stores.put(("in", 0), "s", &key(i), None).unwrap();
        }
        let added = [n + 1, n + 3, SCAN_PAGE as u32 * 1000];
        for i in added {
            stores
                .put(("in", 0), "s", &key(i), Some(b"buffer"))
                .unwrap();
        }
        let mut seen = Vec::new();
        stores
            .scan(("in", 0), "s", b"k/", &mut |k, v| {
                // The visitor writes: to the key it visits, and one the scan has yet to reach.
                let i: u32 = std::str::from_utf8(&k[2..]).unwrap().parse().unwrap();
                stores.put(("in", 0), "s", k, Some(b"seen")).unwrap();
                if i == 5 {
                    stores
                        .put(("in", 0), "s", &key(n + 2), Some(b"late"))
                        .unwrap();
                }
                seen.push((i, v.to_vec()));
                true
            })
            .unwrap();
        let mut expected: Vec<(u32, Vec<u8>)> = (0..n)
            .filter(|i| i % 10 != 0)
            .map(|i| (i, b"disk".to_vec()))
            .collect();
        expected.extend([
            (n + 1, b"buffer".to_vec()),
            (n + 2, b"late".to_vec()),
            (n + 3, b"buffer".to_vec()),
            (SCAN_PAGE as u32 * 1000, b"buffer".to_vec()),
        ]);
        assert_eq!(seen.len(), expected.len());
        assert_eq!(seen, expected);
        // A visitor that stops ends the scan.
        let mut visits = 0;
        stores
            .scan(("in", 0), "s", b"k/", &mut |_, _| {
                visits += 1;
                visits < 300
            })
            .unwrap();
        assert_eq!(visits, 300);
        stores.close(&[tp], true);
    }
}
