//! librdkafka's statistics (every `admin.lag-interval-ms`): the watermarks and committed offsets
//! behind `/status` and the lag gauges, whether the group is joined, and the brokers: their
//! connection states and the partitions they lead, in `/status` and logged as they change (a
//! lost broker, its return, a partition's leader moving).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use crate::offsets::TopicPartition;
use crate::status::{BrokerOffsets, BrokerStatus};
use crate::sync::lock;
use crate::telemetry::Telemetry;

/// Reads one statistics report into `/status`: the watermarks and committed offsets behind the
/// lag, whether the group is joined, and the brokers (as `brokers` watches them).
pub(crate) fn observe(statistics: &[u8], brokers: &Mutex<BrokerWatch>, telemetry: &Telemetry) {
    let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
        return;
    };
    if stats["cgrp"]["state"] == "up" {
        telemetry.health.set_group_joined();
    }
    let mut offsets = HashMap::new();
    // The partitions this pod consumes (librdkafka's "desired" ones).
    let mut assigned = Vec::new();
    for (topic, t) in stats["topics"].as_object().into_iter().flatten() {
        for p in t["partitions"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            let partition = p["partition"].as_i64().unwrap_or(-1);
            if partition < 0 {
                continue; // librdkafka's internal "unassigned" partition
            }
            let get = |k: &str| p[k].as_i64().unwrap_or(-1);
            let tp = TopicPartition::new(topic.clone(), partition as i32);
            if p["desired"] == true {
                assigned.push(tp.clone());
            }
            offsets.insert(
                tp,
                BrokerOffsets {
                    low: get("lo_offset"),
                    high: get("hi_offset"),
                    committed: get("committed_offset"),
                    leader: get("leader") as i32,
                },
            );
        }
    }
    let seen = lock(brokers).observe(listed(&stats, &offsets, &assigned), &offsets);
    telemetry.health.set_brokers(seen);
    telemetry.health.set_broker_offsets(offsets);
}

/// The cluster's brokers (bootstrap entries left out) with the `assigned` partitions each leads.
fn listed(
    stats: &serde_json::Value,
    offsets: &HashMap<TopicPartition, BrokerOffsets>,
    assigned: &[TopicPartition],
) -> Vec<BrokerStatus> {
    let mut leads: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for tp in assigned {
        if let Some(o) = offsets.get(tp).filter(|o| o.leader >= 0) {
            leads.entry(o.leader).or_default().push(tp.to_string());
        }
    }
    let mut out: Vec<BrokerStatus> = stats["brokers"]
        .as_object()
        .into_iter()
        .flat_map(|b| b.values())
        .filter_map(|b| {
            let id = b["nodeid"].as_i64().filter(|id| *id >= 0)? as i32;
            Some(BrokerStatus {
                id,
                address: b["nodename"].as_str().unwrap_or_default().to_owned(),
                state: b["state"].as_str().unwrap_or("?").to_owned(),
                state_seconds: b["stateage"].as_i64().unwrap_or(0) as f64 / 1e6,
                leads: leads.get(&id).cloned().unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by_key(|b| b.id);
    out
}

/// What the statistics said last of the brokers and the leaders, to log what changed and to
/// keep a lost broker in `/status` after the cluster's metadata dropped it.
#[derive(Debug, Default)]
pub(crate) struct BrokerWatch {
    /// Node id -> the broker as last listed.
    seen: HashMap<i32, BrokerStatus>,
    /// Brokers whose lost connection was logged, since when.
    lost: HashMap<i32, Instant>,
    /// Partition -> its leader, as the last statistics said.
    leaders: HashMap<TopicPartition, i32>,
}

/// The state `/status` gives a broker the cluster's metadata no longer lists (stopped, or fenced
/// by the controller).
const GONE: &str = "GONE";

impl BrokerWatch {
    /// Logs what changed since the last statistics; returns the brokers for `/status`: those
    /// listed, and lost ones the metadata dropped (state `GONE`, seconds since lost).
    fn observe(
        &mut self,
        mut brokers: Vec<BrokerStatus>,
        offsets: &HashMap<TopicPartition, BrokerOffsets>,
    ) -> Vec<BrokerStatus> {
        for b in &brokers {
            let was_up = self.seen.get(&b.id).map(|s| s.state == "UP");
            if was_up == Some(true) && b.state != "UP" {
                self.lost(b);
            } else if matches!(b.state.as_str(), "UP" | "INIT")
                && let Some(since) = self.lost.remove(&b.id)
            {
                // INIT: a new handle for a broker the metadata lists again (librdkafka connects
                // to it when it needs it).
                tracing::info!(broker = b.id, address = %b.address, state = %b.state,
                    seconds = format!("{:.1}", since.elapsed().as_secs_f64()),
                    "broker connection back (in the cluster's metadata again)");
            }
        }
        let listed: Vec<i32> = brokers.iter().map(|b| b.id).collect();
        let dropped: Vec<BrokerStatus> = self
            .seen
            .values()
            .filter(|b| !listed.contains(&b.id))
            .cloned()
            .collect();
        for b in dropped {
            if !self.lost.contains_key(&b.id) {
                self.lost(&b);
            }
            let since = self.lost[&b.id];
            brokers.push(BrokerStatus {
                state: GONE.to_owned(),
                state_seconds: since.elapsed().as_secs_f64(),
                leads: Vec::new(),
                ..b
            });
        }
        brokers.sort_by_key(|b| b.id);
        self.seen = brokers.iter().map(|b| (b.id, b.clone())).collect();
        // The partitions of these statistics only (one no longer reported is forgotten), each
        // with its last known leader: while a lost leader is replaced librdkafka reports none.
        let mut leaders = HashMap::new();
        for (tp, o) in offsets {
            let last = self.leaders.get(tp).copied();
            if o.leader >= 0 {
                if let Some(from) = last.filter(|from| *from != o.leader) {
                    tracing::info!(partition = %tp, from, to = o.leader, "partition leader moved");
                }
                leaders.insert(tp.clone(), o.leader);
            } else if let Some(last) = last {
                leaders.insert(tp.clone(), last);
            }
        }
        self.leaders = leaders;
        brokers
    }

    fn lost(&mut self, b: &BrokerStatus) {
        self.lost.insert(b.id, Instant::now());
        if b.leads.is_empty() {
            tracing::info!(broker = b.id, address = %b.address, state = %b.state,
                "broker connection lost (it leads none of this pod's partitions)");
        } else {
            tracing::warn!(broker = b.id, address = %b.address, state = %b.state, leads = %b.leads.join(" "),
                "broker connection lost: its partitions wait until it is back or the cluster elects new leaders (librdkafka follows them); nothing is committed past what was handled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(brokers: &[(i32, &str)]) -> serde_json::Value {
        let mut b = serde_json::json!({"127.0.0.1:9/bootstrap": {"nodeid": -1, "nodename": "127.0.0.1:9", "state": "UP", "stateage": 1}});
        for (id, state) in brokers {
            b[format!("127.0.0.1:{id}/{id}")] = serde_json::json!({"nodeid": id, "nodename": format!("127.0.0.1:{id}"), "state": state, "stateage": 2_500_000});
        }
        serde_json::json!({"brokers": b})
    }

    fn observe(watch: &mut BrokerWatch, listed: &[(i32, &str)], leader: i32) -> Vec<BrokerStatus> {
        let tp = TopicPartition::new("in", 0);
        let offsets = HashMap::from([(
            tp.clone(),
            BrokerOffsets {
                low: 0,
                high: 1,
                committed: 0,
                leader,
            },
        )]);
        watch.observe(super::listed(&stats(listed), &offsets, &[tp]), &offsets)
    }

    #[test]
    fn brokers_show_their_state_and_leaderships_and_a_dropped_one_stays_as_gone() {
        let mut watch = BrokerWatch::default();
        let all = observe(&mut watch, &[(1, "UP"), (2, "UP")], 2);
        assert_eq!(all.len(), 2, "the bootstrap entry is not a broker: {all:?}");
        assert_eq!(
            (all[1].id, all[1].leads.clone()),
            (2, vec!["in/0".to_owned()])
        );
        assert_eq!(all[1].state_seconds, 2.5);
        // Lost, then dropped by the metadata while the leader moved: still listed, as GONE.
        let lost = observe(&mut watch, &[(1, "UP"), (2, "TRY_CONNECT")], 2);
        assert_eq!(lost[1].state, "TRY_CONNECT");
        assert!(watch.lost.contains_key(&2));
        let gone = observe(&mut watch, &[(1, "UP")], 1);
        assert_eq!(
            (gone.len(), gone[1].state.as_str(), gone[1].leads.len()),
            (2, GONE, 0)
        );
        assert_eq!(gone[0].leads, vec!["in/0".to_owned()]);
        // A statistics tick between the old leader and the new one reports none: the old one
        // is remembered, so the move from it is seen.
        let mut between = BrokerWatch::default();
        observe(&mut between, &[(1, "UP"), (2, "UP")], 2);
        observe(&mut between, &[(1, "UP"), (2, "TRY_CONNECT")], -1);
        assert_eq!(between.leaders[&TopicPartition::new("in", 0)], 2);
        assert_eq!(watch.leaders[&TopicPartition::new("in", 0)], 1);
        // Listed again (a new handle, not connected yet): back.
        let back = observe(&mut watch, &[(1, "UP"), (2, "INIT")], 1);
        assert_eq!(back[1].state, "INIT");
        assert!(watch.lost.is_empty());
    }
}
