//! librdkafka's statistics (every `admin.lag-interval-ms`): the watermarks and committed offsets
//! behind `/status` and the lag gauges, and whether the group is joined.

use std::collections::HashMap;

use rdkafka::ClientContext;

use super::rebalance::RebalanceContext;
use crate::offsets::TopicPartition;
use crate::status::BrokerOffsets;

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `admin.lag-interval-ms`): the watermarks and committed
    /// offsets behind the lag, and whether the group is joined.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        if stats["cgrp"]["state"] == "up" {
            self.telemetry.health.set_group_joined();
        }
        let mut offsets = HashMap::new();
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
                offsets.insert(
                    TopicPartition::new(topic.clone(), partition as i32),
                    BrokerOffsets {
                        low: get("lo_offset"),
                        high: get("hi_offset"),
                        committed: get("committed_offset"),
                    },
                );
            }
        }
        self.telemetry.health.set_broker_offsets(offsets);
    }
}
