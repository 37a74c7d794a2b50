//! Plugin upgrades in the poll loop (`crate::upgrade` says what and why): a request from `POST
//! /plugin` is checked, then every partition is released (drained, committed, state closed),
//! the pool's instances are swapped, and the partitions are taken back from their committed
//! offsets; a new version on trial is swapped back out when its first events fail too often.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::KafkaConsumer;
use crate::config::PipelineSpec;
use crate::dispatch::Dispatcher;
use crate::plugin::Plugin;
use crate::sync::lock;
use crate::telemetry::Telemetry;
use crate::upgrade::{Answer, UpgradeRequest, Verdict, check_library, status, verdict};
use crate::worker::WorkerShared;

/// How long reading the committed offsets back may take.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);

/// A version on trial: the one before, and the run's event counts when it started.
struct Trial {
    previous: Plugin,
    base: (u64, u64),
}

/// The poll loop's side of plugin upgrades.
pub(super) struct Upgrader {
    requests: mpsc::Receiver<UpgradeRequest>,
    trial: Option<Trial>,
    watch_events: u64,
    max_error_rate: f64,
}

impl Upgrader {
    pub(super) fn new(requests: mpsc::Receiver<UpgradeRequest>, spec: &PipelineSpec) -> Upgrader {
        Upgrader {
            requests,
            trial: None,
            watch_events: spec.admin.upgrade_watch_events,
            max_error_rate: spec.admin.upgrade_max_error_rate,
        }
    }

    /// One turn of the poll loop: serves a waiting request, and judges the version on trial.
    pub(super) fn turn(
        &mut self,
        spec: &PipelineSpec,
        consumer: &KafkaConsumer,
        dispatcher: &Arc<Mutex<Dispatcher>>,
        shared: &WorkerShared,
    ) {
        if shared.failure.is_set() {
            return;
        }
        if let Ok(request) = self.requests.try_recv() {
            let running = lock(dispatcher).workers_mut().plugin();
            let answer = self.upgrade(spec, consumer, dispatcher, shared, &request, running);
            // Whatever came of it, a library that was mapped stays mapped.
            shared
                .telemetry
                .metrics
                .plugin_libraries_loaded
                .set(crate::plugin::libraries_loaded() as i64);
            let _ = request.reply.send(answer);
        }
        let Some(trial) = &self.trial else {
            return;
        };
        let now = counts(shared);
        let running = lock(dispatcher).workers_mut().plugin();
        match verdict(trial.base, now, self.watch_events, self.max_error_rate) {
            Verdict::Watching => {}
            Verdict::Keep => {
                let previous = trial.previous;
                let (seen, failed) = (now.0 - trial.base.0, now.1 - trial.base.1);
                self.trial = None;
                let message = format!("kept: {failed} of its first {seen} events failed");
                tracing::info!(from = %previous.label(), to = %running.label(), "plugin upgrade {message}");
                show(
                    shared,
                    &running,
                    Some(status(&previous, &running, "upgraded", message)),
                );
            }
            Verdict::RollBack(rate) => {
                let previous = trial.previous;
                self.trial = None;
                let why = format!(
                    "{:.0}% of its first {} events failed (admin.upgrade-max-error-rate {})",
                    rate * 100.0,
                    self.watch_events,
                    self.max_error_rate
                );
                match swap(consumer, dispatcher, previous) {
                    Ok(_) => {
                        let message = format!("rolled back to {}: {why}", previous.label());
                        tracing::error!(from = %running.label(), to = %previous.label(), "plugin upgrade rolled back: {why}");
                        count(shared, "rolled-back");
                        shared.plugin.set(&previous);
                        show(
                            shared,
                            &previous,
                            Some(status(&previous, &running, "rolled-back", message)),
                        );
                    }
                    Err(err) => shared.failure.set(format!(
                        "plugin upgrade: rolling back to {} failed: {err}",
                        previous.label()
                    )),
                }
            }
        }
    }

    fn upgrade(
        &mut self,
        spec: &PipelineSpec,
        consumer: &KafkaConsumer,
        dispatcher: &Arc<Mutex<Dispatcher>>,
        shared: &WorkerShared,
        request: &UpgradeRequest,
        running: Plugin,
    ) -> Answer {
        let refuse = |why: String| {
            tracing::warn!(plugin = %running.label(), path = %request.path.display(), "plugin upgrade refused: {why}");
            count(shared, "refused");
            let mut shown = status(&running, &running, "refused", why.clone());
            shown.to = request.path.display().to_string();
            show(shared, &running, Some(shown));
            Answer::Refused(format!("upgrade refused, nothing changed: {why}"))
        };
        if self.trial.is_some() {
            return refuse(format!(
                "{} is still on trial (its first {} events): try again once it is kept or rolled back (/status)",
                running.label(),
                self.watch_events
            ));
        }
        let new = match check_library(spec, &running, &request.path, &request.sha256) {
            Ok(new) => new,
            Err(why) => return refuse(why),
        };
        tracing::info!(from = %running.label(), to = %new.label(), path = %new.path().display(), "plugin upgrade: draining every partition");
        match swap(consumer, dispatcher, new) {
            Ok(previous) => {
                shared.plugin.set(&new);
                count(shared, "upgraded");
                let message = format!(
                    "running; judged after its first {} events",
                    self.watch_events
                );
                show(
                    shared,
                    &new,
                    Some(status(&previous, &new, "watching", message)),
                );
                self.trial = Some(Trial {
                    previous,
                    base: counts(shared),
                });
                tracing::info!(from = %previous.label(), to = %new.label(), "plugin upgraded");
                Answer::Upgraded(format!(
                    "upgraded {} -> {}: every partition drained and committed, resumed on the new version; judged after its first {} events (/status)",
                    previous.label(),
                    new.label(),
                    self.watch_events
                ))
            }
            Err(why) => {
                tracing::error!(from = %running.label(), to = %new.label(), "plugin upgrade rolled back: {why}");
                count(shared, "rolled-back");
                let message = format!("rolled back to {}: {why}", running.label());
                show(
                    shared,
                    &running,
                    Some(status(&running, &new, "rolled-back", message.clone())),
                );
                Answer::RolledBack(format!("upgrade {message}"))
            }
        }
    }
}

/// The run's counts of events handed to the plugin and of those it failed.
fn counts(shared: &WorkerShared) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    (
        shared.events_in.load(Ordering::Relaxed),
        shared.events_failed.load(Ordering::Relaxed),
    )
}

fn count(shared: &WorkerShared, outcome: &str) {
    shared
        .telemetry
        .metrics
        .plugin_upgrades
        .with_label_values(&[outcome])
        .inc();
}

/// What `/status` and `sluice_plugin_info` show: `plugin` runs, after `upgrade`.
fn show(shared: &WorkerShared, plugin: &Plugin, upgrade: Option<crate::status::UpgradeStatus>) {
    let telemetry: &Telemetry = &shared.telemetry;
    let info = &telemetry.metrics.plugin_info;
    if let Some(before) = telemetry.health.plugin() {
        let _ = info.remove_label_values(&[&before.name, &before.version, &before.abi_version]);
    }
    info.with_label_values(&[plugin.name(), plugin.version(), &plugin.abi_version()])
        .set(1);
    telemetry.health.set_plugin(plugin.status(upgrade));
}

/// Swaps the running plugin for `to`: every partition released (drained, flushed,
/// acknowledged, committed, state closed with a checkpoint), the instances swapped (when one
/// of `to` fails to open, the old ones stay), and the partitions taken back from their
/// committed offsets (state reopened off the poll thread). Returns the plugin before.
fn swap(
    consumer: &KafkaConsumer,
    dispatcher: &Arc<Mutex<Dispatcher>>,
    to: Plugin,
) -> Result<Plugin, String> {
    let mut d = lock(dispatcher);
    let all = d.partitions();
    let incomplete = d.release(consumer, &all);
    if incomplete > 0 {
        tracing::warn!(
            incomplete,
            "plugin upgrade: units still incomplete at the drain timeout are read again (at least once)"
        );
    }
    let swapped = d.workers_mut().swap(to);
    if all.is_empty() {
        return swapped;
    }
    let mut tpl = TopicPartitionList::new();
    for tp in &all {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    // Paused ones (a full partition when released) would never resume: the slots are new.
    if let Err(err) = consumer.resume(&tpl) {
        tracing::warn!("plugin upgrade: resume failed: {err}");
    }
    d.assign(consumer, &all, &HashSet::new(), "")?;
    // What was read past the committed offsets and not processed (held, or in this turn's
    // burst) is read again, by the version now running.
    let committed = consumer
        .committed_offsets(tpl, OFFSETS_TIMEOUT)
        .map_err(|e| format!("plugin upgrade: cannot read the committed offsets back: {e}"))?;
    let mut seek = TopicPartitionList::new();
    for e in committed.elements() {
        if let Offset::Offset(at) = e.offset() {
            seek.add_partition_offset(e.topic(), e.partition(), Offset::Offset(at))
                .map_err(|e| format!("plugin upgrade: {e}"))?;
        }
    }
    if seek.count() > 0 {
        consumer
            .seek_partitions(seek, OFFSETS_TIMEOUT)
            .map_err(|e| format!("plugin upgrade: cannot seek to the committed offsets: {e}"))?;
    }
    swapped
}
