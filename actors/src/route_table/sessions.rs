//! The live-session registry: which WebSocket sessions run, on which rule and member, the last
//! [`RECENT_ENDINGS`] that ended, and drain selection (by member, by removed route, all, a
//! fraction of a member): which sessions a drain picks, and, through their
//! [`DrainPlan`](crate::drain_schedule::DrainPlan), when each one's close goes out (recorded
//! here for `GET /sessions`).
//!
//! Sessions report in batches ([`crate::messages::SessionsChanged`]); a session is only
//! *known* here, never held: the registry keeps a weak address to send it drain orders and
//! counter queries, and nothing of the session's resources (its connection's place in
//! `max_connections` and its rule's `max_sessions` live in the session itself).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::WeakAddr;

use crate::drain_schedule::DrainPlan;
use crate::messages::{
    DrainSession, EndedSessionInfo, LiveSessionInfo, SessionEnded, SessionOpened, SessionStatsQuery,
};
use crate::outcome::{SessionId, SessionSummary};
use crate::session::SessionActor;

/// How many ended sessions the route table remembers for `GET /sessions` and the status page.
pub const RECENT_ENDINGS: usize = 100;

/// How long `GET /sessions` waits for a session to report its counters (a session on a busy
/// worker answers late; it is then listed without counters).
pub const SESSION_STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the route table knows of one live session.
pub(crate) struct LiveSession {
    /// The routing rule that admitted it.
    pub(crate) route: Arc<str>,
    /// The pool member it is connected to (before the settings' port override): what drains
    /// by member compare.
    pub(crate) member: SocketAddr,
    /// The port it is connected to on the member (see [`LiveSession::backend`]).
    port: u16,
    http_version: crate::http2::HttpProtocol,
    opened: Instant,
    /// When a drain scheduled its close frames.
    close_at: Option<Instant>,
    /// The session actor (weak: see [`SessionOpened::session`]).
    session: WeakAddr<SessionActor>,
}

impl LiveSession {
    /// The address the session is connected to: its member, on the port its settings chose.
    pub(crate) fn backend(&self) -> SocketAddr {
        let mut backend = self.member;
        backend.set_port(self.port);
        backend
    }
}

/// Every live session, the recent endings, and whether shutdown drained them all.
#[derive(Default)]
pub(crate) struct Sessions {
    live: HashMap<SessionId, LiveSession>,
    /// The last [`RECENT_ENDINGS`] sessions that ended, oldest first, with when they ended.
    recent: VecDeque<(Instant, EndedSessionInfo)>,
    /// Set by [`Sessions::drain_all`]: sessions reported after it are drained as they register.
    draining: Option<DrainSession>,
}

impl Sessions {
    /// Sessions registered now.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Registers a session that started (drained at once after [`Sessions::drain_all`]).
    pub(crate) fn opened(&mut self, msg: SessionOpened) {
        if let Some(order) = self.draining {
            // Reported after every session was drained for shutdown: this one started before
            // it could see the signal, so it is drained now.
            drain(&msg.session, order);
        }
        self.live.insert(
            msg.id,
            LiveSession {
                route: msg.route,
                member: msg.member,
                port: msg.port,
                http_version: msg.http_version,
                opened: Instant::now(),
                close_at: self.draining.map(|_| Instant::now()),
                session: msg.session,
            },
        );
    }

    /// Deregisters a session that ended and remembers how it ended.
    pub(crate) fn ended(&mut self, msg: SessionEnded) {
        if let Some(live) = self.live.remove(&msg.id) {
            tracing::debug!(
                session = msg.id.0,
                route = %live.route,
                backend = %live.backend(),
                registered_for = ?live.opened.elapsed(),
                "session deregistered"
            );
        }
        if self.recent.len() == RECENT_ENDINGS {
            self.recent.pop_front();
        }
        self.recent
            .push_back((Instant::now(), ended_info(msg.id, &msg.summary)));
    }

    /// Drains every session as `plan` says for its rule, and every one that registers from
    /// now on with `late` (at once: it started after the signal).
    pub(crate) fn drain_all(
        &mut self,
        late: DrainSession,
        plan: impl Fn(&LiveSession) -> DrainPlan,
    ) -> usize {
        self.draining = Some(late);
        self.drain_where(|live| Some(plan(live)))
    }

    /// Drains every session for which `plan` answers a plan; answers how many. The sessions of
    /// one rule share its plan's window: each gets its own slot in it.
    pub(crate) fn drain_where(
        &mut self,
        plan: impl Fn(&LiveSession) -> Option<DrainPlan>,
    ) -> usize {
        let picked: Vec<(SessionId, DrainPlan)> = self
            .live
            .iter()
            .filter_map(|(id, live)| plan(live).map(|p| (*id, p)))
            .collect();
        self.schedule(picked)
    }

    /// Drains `fraction` (0 to 1, rounded up) of the sessions for which `pick` says yes, the
    /// oldest first (they have had their share of the member the longest), with `plan`;
    /// answers how many.
    pub(crate) fn drain_fraction(
        &mut self,
        fraction: f64,
        plan: DrainPlan,
        pick: impl Fn(&LiveSession) -> bool,
    ) -> usize {
        let mut ids: Vec<SessionId> = self
            .live
            .iter()
            .filter(|(_, live)| pick(live))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_by_key(|id| self.live[id].opened);
        let n = (ids.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize;
        ids.truncate(n);
        self.schedule(ids.into_iter().map(|id| (id, plan)).collect())
    }

    /// Sends each picked session its order: per rule, slot `i` of that rule's `n` in its plan.
    fn schedule(&mut self, mut picked: Vec<(SessionId, DrainPlan)>) -> usize {
        picked.sort_by(|a, b| self.live[&a.0].route.cmp(&self.live[&b.0].route));
        let now = Instant::now();
        let total = picked.len();
        let mut start = 0;
        while start < total {
            let route = self.live[&picked[start].0].route.clone();
            let end = picked[start..]
                .iter()
                .position(|(id, _)| self.live[id].route != route)
                .map_or(total, |k| start + k);
            let n = end - start;
            for (i, (id, plan)) in picked[start..end].iter().enumerate() {
                let order = plan.order(i, n, crate::jitter::unit());
                if let Some(live) = self.live.get_mut(id) {
                    let at = now + order.close_in;
                    live.close_at = Some(live.close_at.map_or(at, |t| t.min(at)));
                    drain(&live.session, order);
                }
            }
            start = end;
        }
        total
    }

    /// The recent endings, newest first, aged as of `now`.
    pub(crate) fn recent_endings(&self, now: Instant) -> Vec<EndedSessionInfo> {
        self.recent
            .iter()
            .rev()
            .map(|(at, info)| EndedSessionInfo {
                ended_ms_ago: now.saturating_duration_since(*at).as_millis() as u64,
                ..info.clone()
            })
            .collect()
    }

    /// Every live session by id; with `stats`, each asked for its counters (concurrently, off
    /// the actor, each within [`SESSION_STATS_TIMEOUT`]).
    pub(crate) fn report(&self, stats: bool) -> actix::ResponseFuture<Vec<LiveSessionInfo>> {
        let now = Instant::now();
        let mut list: Vec<(LiveSessionInfo, WeakAddr<SessionActor>)> = self
            .live
            .iter()
            .map(|(id, live)| {
                let close_in_ms = live.close_at.map(|at| {
                    if at >= now {
                        (at - now).as_millis() as i64
                    } else {
                        -((now - at).as_millis() as i64)
                    }
                });
                let info = LiveSessionInfo {
                    id: id.0,
                    route: live.route.to_string(),
                    backend: live.backend(),
                    age_ms: now.saturating_duration_since(live.opened).as_millis() as u64,
                    close_in_ms,
                    http_version: live.http_version,
                    stats: None,
                };
                (info, live.session.clone())
            })
            .collect();
        list.sort_by_key(|(s, _)| s.id);
        if !stats {
            return Box::pin(std::future::ready(
                list.into_iter().map(|(info, _)| info).collect(),
            ));
        }
        // Every session is asked at once; the answers are awaited off the actor, so the
        // route table keeps handling messages meanwhile.
        Box::pin(futures_util::future::join_all(list.into_iter().map(
            |(mut info, session)| async move {
                let Some(session) = session.upgrade() else {
                    return info; // ended meanwhile
                };
                let asked = session.send(SessionStatsQuery);
                if let Ok(Ok(stats)) = tokio::time::timeout(SESSION_STATS_TIMEOUT, asked).await {
                    info.stats = Some(stats);
                }
                info
            },
        )))
    }
}

/// How a session ended, as `GET /sessions` lists it (aged when reported).
fn ended_info(id: SessionId, summary: &SessionSummary) -> EndedSessionInfo {
    let o = &summary.outcome;
    EndedSessionInfo {
        id: id.0,
        route: summary.route.to_string(),
        backend: summary.backend,
        client: summary.client,
        ended_ms_ago: 0,
        duration_ms: summary.duration.as_millis() as u64,
        cause: o.cause.as_str(),
        initiator: o.initiator.map(|i| i.as_str()),
        client_close_code: o.client_close.as_ref().and_then(|c| c.code),
        backend_close_code: o.backend_close.as_ref().and_then(|c| c.code),
        tether_close_code: o.tether_close,
        client_bytes: summary.client_bytes,
        backend_bytes: summary.backend_bytes,
    }
}

/// Sends `order` to a session that is still running (one that ended meanwhile is skipped).
fn drain(session: &WeakAddr<SessionActor>, order: DrainSession) {
    if let Some(session) = session.upgrade() {
        session.do_send(order);
    }
}
