//! `GET /backends`: the route table's answer, built from its pools and the members' shared
//! records. The answer's types live in [`crate::messages`] beside [`BackendsReport`].
//!
//! [`BackendsReport`]: crate::messages::BackendsReport

use std::time::{Duration, Instant};

use tether_config::{Config, LoadBalancing};

use super::membership::{MemberState, PoolState};
use crate::messages::{
    ConnectFailures, LastChange, LastProbe, MemberStatus, PassiveStatus, PoolStatus,
};

/// One pool and its members as of `now`; `config` says whether a rule routes to it.
pub(crate) fn pool_status(pool: &PoolState, config: &Config, now: Instant) -> PoolStatus {
    let members: Vec<MemberStatus> = pool
        .members
        .values()
        .map(|m| member_status(pool, m, now))
        .collect();
    PoolStatus {
        routed: config
            .routing_rules
            .values()
            .any(|r| r.backend_pool == *pool.name),
        name: pool.name.to_string(),
        load_balancing: pool.config.load_balancing,
        hash_key: (pool.config.load_balancing == LoadBalancing::ConsistentHash)
            .then(|| pool.config.hash_key.to_string()),
        probe: pool.probe.clone(),
        passive_failures: pool.config.passive.failures,
        in_rotation: members.iter().filter(|m| m.in_rotation).count(),
        members,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// One member of `pool` as of `now`.
fn member_status(pool: &PoolState, m: &MemberState, now: Instant) -> MemberStatus {
    let probe = m.shared.probe_report();
    MemberStatus {
        address: m.shared.addr,
        configured_as: pool.config.members[m.entry].to_string(),
        weight: m.shared.weight,
        state: m.state(),
        in_rotation: m.in_rotation(),
        live_sessions: m.shared.sessions(),
        in_flight_requests: m.shared.requests(),
        consecutive_successes: probe.as_ref().map_or(0, |p| p.consecutive_successes),
        consecutive_failures: probe.as_ref().map_or(0, |p| p.consecutive_failures),
        last_probe: probe.map(|p| LastProbe {
            ok: p.ok,
            result: p.detail,
            latency_ms: p.latency.as_secs_f64() * 1e3,
            ago_ms: ms(now.saturating_duration_since(p.at)),
        }),
        last_change: m.last_flip.as_ref().map(|f| LastChange {
            to: if f.healthy { "healthy" } else { "unhealthy" },
            after: f.after,
            reason: f.reason.clone(),
            ago_ms: ms(now.saturating_duration_since(f.at)),
        }),
        passive: PassiveStatus {
            consecutive_failures: m.shared.passive_failures(),
            ejections: m.ejection.total,
            ejection_ms: (m.ejection.total > 0).then(|| ms(m.ejection.length)),
            ejected_for_ms: m
                .ejection
                .until
                .map(|until| ms(until.saturating_duration_since(now))),
            last_error: m.ejection.last_error.clone(),
        },
        connect_failures: {
            let [error, timeout, tls, no_local_port] = m.shared.connect_failures();
            ConnectFailures {
                error,
                timeout,
                tls,
                no_local_port,
            }
        },
    }
}
