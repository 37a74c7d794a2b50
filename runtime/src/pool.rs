//! The worker pool: a run's worker threads, each with its own plugin instance, and the only
//! sender of worker commands. It can grow and shrink while running (the dispatcher makes it
//! follow the container's CPU quota). Opening and stopping workers is here; which partitions a
//! worker holds, and moving them between workers, is the dispatcher's (`crate::dispatch`), which
//! reaches the pool through [`Workers`] (a fake in its unit tests).

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use sluice_plugin_api::abi::OpenContext;

use crate::config::PipelineSpec;
use crate::error::RunError;
use crate::offsets::TopicPartition;
use crate::plugin::Plugin;
use crate::worker::{Command, Delivery, Request, Worker, WorkerShared};

/// What the dispatcher asks of its workers: the pool's commands, by worker id (`0..len()`).
pub(crate) trait Workers {
    /// How many workers run.
    fn len(&self) -> usize;
    /// Events of assigned partitions, a partition's in offset order, each unit's part whole.
    fn events(&self, worker: usize, events: Vec<Delivery>);
    /// Partitions newly pinned to `worker`: it calls `assigned`.
    fn assigned(&self, worker: usize, partitions: Vec<TopicPartition>);
    /// `worker` finishes what is queued, calls `revoked` and `flush`, then replies.
    fn revoke(&self, worker: usize, partitions: Vec<TopicPartition>) -> mpsc::Receiver<()>;
    /// `worker` finishes what is queued and flushes, then replies (a transaction's commit point).
    fn barrier(&self, worker: usize) -> mpsc::Receiver<()>;
    /// Every worker flushes between two inbox messages (ahead of queued events); one reply each.
    fn flush_round(&self) -> Vec<mpsc::Receiver<()>>;
    /// `worker` gives `partitions` up ahead of its queued events: it calls `revoked` and
    /// flushes, and its reply holds their events it had not processed yet, in order.
    fn handoff(
        &self,
        worker: usize,
        partitions: Vec<TopicPartition>,
    ) -> Option<mpsc::Receiver<Vec<Delivery>>>;
    /// Starts worker `len()`; `of` is the count its instance is told about.
    fn grow(&mut self, of: usize) -> Result<(), String>;
    /// Stops the highest-numbered worker once it has finished what is queued.
    fn shrink(&mut self);
}

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
            pool.open(count)?;
        }
        Ok(pool)
    }

    /// Opens one more instance and starts its worker (id `len()`); `of` is the worker count the
    /// instance is told about (`OpenContext::worker_count`).
    fn open(&mut self, of: usize) -> Result<(), RunError> {
        let id = self.workers.len();
        let label = self.shared.plugin.to_string();
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

    /// The plugin the workers run.
    pub(crate) fn plugin(&self) -> Plugin {
        self.plugin
    }

    /// A plugin upgrade: opens an instance of `plugin` for every worker (with the spec's
    /// config), and only when all opened puts them in place of the current ones, which close.
    /// The caller has released every partition first. Returns the plugin before; when an
    /// instance fails to open, the ones opened close again and nothing changes.
    pub(crate) fn swap(&mut self, plugin: Plugin) -> Result<Plugin, String> {
        let count = self.workers.len();
        let label = plugin.label();
        let mut opened = Vec::with_capacity(count);
        for id in 0..count {
            let ctx = OpenContext::new(&self.pipeline, id as u32, count as u32);
            let mut collector = crate::sink::NullCollector::new(&label);
            match plugin
                .plugin_ref()
                .open(&self.config_json, &ctx, &mut collector)
            {
                Ok(instance) => opened.push(instance),
                Err(err) => {
                    for instance in opened {
                        let _ = instance.close(&mut collector);
                    }
                    return Err(format!("plugin {label} failed to open: {err}"));
                }
            }
        }
        let replies: Vec<_> = opened
            .into_iter()
            .enumerate()
            .map(|(id, instance)| {
                let (reply, rx) = mpsc::sync_channel(1);
                self.send(id, Command::Swap(Box::new(instance), reply));
                rx
            })
            .collect();
        for rx in replies {
            let _ = rx.recv();
        }
        Ok(std::mem::replace(&mut self.plugin, plugin))
    }

    /// Sends `command` to `worker` (a worker that has ended drops it: the run is stopping).
    fn send(&self, worker: usize, command: Command) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w.tx.send(command);
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

impl Workers for WorkerPool {
    fn len(&self) -> usize {
        self.workers.len()
    }

    fn events(&self, worker: usize, events: Vec<Delivery>) {
        self.send(worker, Command::Events(events));
    }

    fn assigned(&self, worker: usize, partitions: Vec<TopicPartition>) {
        self.send(worker, Command::Assigned(partitions));
    }

    fn revoke(&self, worker: usize, partitions: Vec<TopicPartition>) -> mpsc::Receiver<()> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(worker, Command::Revoke(partitions, reply));
        rx
    }

    fn barrier(&self, worker: usize) -> mpsc::Receiver<()> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(worker, Command::Barrier(reply));
        rx
    }

    fn flush_round(&self) -> Vec<mpsc::Receiver<()>> {
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

    fn handoff(
        &self,
        worker: usize,
        partitions: Vec<TopicPartition>,
    ) -> Option<mpsc::Receiver<Vec<Delivery>>> {
        let w = self.workers.get(worker)?;
        let (reply, rx) = mpsc::sync_channel(1);
        w.requests.send(Request::Handoff(partitions, reply)).ok()?;
        let _ = w.tx.send(Command::Nudge);
        Some(rx)
    }

    fn grow(&mut self, of: usize) -> Result<(), String> {
        self.open(of).map_err(|e| e.to_string())
    }

    /// Stops the highest-numbered worker: it finishes what is queued, closes its instance and
    /// ends. The caller has moved its partitions away first.
    fn shrink(&mut self) {
        if let Some(w) = self.workers.pop() {
            let _ = w.tx.send(Command::Stop);
            let _ = w.thread.join();
            self.shared.telemetry.health.remove_last_worker();
            self.shared.telemetry.metrics.workers.set(self.len() as i64);
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
