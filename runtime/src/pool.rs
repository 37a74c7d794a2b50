//! The worker pool: a run's worker threads, each with its own plugin instance. It can grow and
//! shrink while running (the Kafka source makes it follow the container's CPU quota). Opening
//! and stopping workers is here; which partitions a worker holds, and moving them between
//! workers, is the dispatcher's (`source::kafka::resize`).

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use sluice_plugin_api::abi::OpenContext;

use crate::config::PipelineSpec;
use crate::offsets::TopicPartition;
use crate::plugin::Plugin;
use crate::run::RunError;
use crate::worker::{Command, Delivery, Request, Worker, WorkerShared};

/// One running worker.
struct Handle {
    tx: mpsc::Sender<Command>,
    /// Flushes and handoffs, served ahead of queued events.
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

/// The workers of a run. Worker ids are their positions: `0..len()`; growing adds the next id,
/// shrinking removes the highest.
pub(crate) struct WorkerPool {
    workers: Vec<Handle>,
    plugin: Plugin,
    config_json: String,
    pipeline: String,
    spec_file: PathBuf,
    shared: Arc<WorkerShared>,
    batch_size: usize,
}

impl WorkerPool {
    /// A pool of `count` workers, each with an instance of `plugin` opened with the spec's
    /// `plugin.config`.
    pub(crate) fn start(
        plugin: Plugin,
        spec: &PipelineSpec,
        shared: Arc<WorkerShared>,
        batch_size: usize,
        count: usize,
    ) -> Result<WorkerPool, RunError> {
        let mut pool = WorkerPool {
            workers: Vec::with_capacity(count),
            plugin,
            config_json: spec.plugin.config.to_string(),
            pipeline: spec.name.clone(),
            spec_file: spec.file.clone(),
            shared,
            batch_size,
        };
        for _ in 0..count {
            pool.grow(count)?;
        }
        Ok(pool)
    }

    /// How many workers run.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// The workers' inboxes, in id order.
    pub(crate) fn senders(&self) -> Vec<mpsc::Sender<Command>> {
        self.workers.iter().map(|w| w.tx.clone()).collect()
    }

    /// Asks every worker to flush between two inbox messages (ahead of queued events) and wakes
    /// the idle ones; one reply per worker.
    pub(crate) fn flush_round(&self) -> Vec<mpsc::Receiver<()>> {
        self.workers
            .iter()
            .map(|w| {
                let (reply, rx) = mpsc::sync_channel(1);
                let _ = w.requests.send(Request::Flush(reply));
                let _ = w.tx.send(Command::Nudge);
                rx
            })
            .collect()
    }

    /// Asks worker `id` to give `partitions` up ahead of its queued events: it calls `revoked`
    /// and flushes, and its reply holds their events it had not processed yet, in order.
    pub(crate) fn handoff(
        &self,
        id: usize,
        partitions: Vec<TopicPartition>,
    ) -> Option<mpsc::Receiver<Vec<Delivery>>> {
        let w = self.workers.get(id)?;
        let (reply, rx) = mpsc::sync_channel(1);
        w.requests.send(Request::Handoff(partitions, reply)).ok()?;
        let _ = w.tx.send(Command::Nudge);
        Some(rx)
    }

    /// Opens one more instance and starts its worker (id `len()`); `of` is the worker count the
    /// instance is told about (`OpenContext::worker_count`).
    pub(crate) fn grow(&mut self, of: usize) -> Result<(), RunError> {
        let id = self.workers.len();
        let label = self.shared.plugin.clone();
        let ctx = OpenContext::new(&self.pipeline, id as u32, of as u32);
        let mut emitter = crate::sink::NullCollector::new(&label);
        let instance = self
            .plugin
            .plugin_ref()
            .open(&self.config_json, &ctx, &mut emitter)
            .map_err(|source| RunError::Open {
                plugin: label,
                spec: self.spec_file.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        let (requests, requests_rx) = mpsc::channel();
        let probe = self.shared.telemetry.health.add_worker();
        let worker = Worker::new(
            instance,
            self.shared.clone(),
            self.batch_size,
            requests_rx,
            id,
            probe,
        );
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| RunError::Setup(format!("cannot start worker thread: {e}")))?;
        self.workers.push(Handle {
            tx,
            requests,
            thread,
        });
        self.shared.telemetry.metrics.workers.set(self.len() as i64);
        Ok(())
    }

    /// Stops the highest-numbered worker: it finishes what is queued, closes its instance and
    /// ends. The caller has moved its partitions away first.
    pub(crate) fn shrink(&mut self) {
        if let Some(w) = self.workers.pop() {
            let _ = w.tx.send(Command::Stop);
            let _ = w.thread.join();
            self.shared.telemetry.health.remove_last_worker();
            self.shared.telemetry.metrics.workers.set(self.len() as i64);
        }
    }

    /// Stops every worker (each closes its instance) and waits for them.
    pub(crate) fn stop(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(Command::Stop);
        }
        for w in self.workers.drain(..) {
            drop(w.tx);
            let _ = w.thread.join();
        }
    }
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}
