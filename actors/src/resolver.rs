//! DNS members: one [`ResolverActor`] per pool that has `host:port` members.
//!
//! Each name is resolved with hickory-resolver (A and AAAA), and re-resolved when its answer
//! expires: after its TTL, clamped to `[dns.min_ttl, dns.max_ttl]`. When the address set
//! changes the actor sends [`MembersResolved`] to the route table, which adds the new
//! addresses (they start unknown when the pool is probed) and drops the ones that disappeared:
//! those get no new requests or sessions, but sessions already on them are not cut.
//!
//! A failed resolution — an error, a timeout, or an answer with no address — keeps the last good
//! set (a DNS hiccup must not empty a pool), is logged, and is retried after `dns.min_ttl`.
//!
//! The start-up resolution ([`resolve_all`]) happens before the listeners accept anything, so a
//! DNS-only pool does not answer 503 for its first requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Recipient, WrapFuture};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tether_config::{Config, DnsConfig, Member};

use crate::member::DnsMember;
use crate::messages::MembersResolved;
use crate::shutdown::ShutdownSignal;

/// A resolver configured from `[dns]`, shared by every pool's [`ResolverActor`].
pub struct DnsResolver {
    inner: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

/// One successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The addresses, sorted, without duplicates.
    pub ips: Vec<IpAddr>,
    /// When to resolve again: the answer's TTL clamped to `[min_ttl, max_ttl]`.
    pub refresh: Duration,
}

impl DnsResolver {
    /// Builds the resolver: `dns.name_servers` when set, else the system's configuration. The
    /// cache keeps answers no longer than `max_ttl` (and no shorter than `min_ttl`), so a
    /// re-resolution after the clamped TTL really asks the name server.
    pub fn new(config: &DnsConfig) -> Result<DnsResolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.name_servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let servers = config
                .name_servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        options.positive_min_ttl = Some(config.min_ttl);
        options.positive_max_ttl = Some(config.max_ttl);
        options.negative_min_ttl = Some(config.min_ttl);
        options.negative_max_ttl = Some(config.max_ttl);
        let inner = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(DnsResolver {
            inner,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
        })
    }

    /// Resolves `host` to its addresses. An answer with no address is an error.
    pub async fn resolve(&self, host: &str) -> Result<Resolution, String> {
        let lookup = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err("the answer has no address".into());
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(Resolution {
            ips,
            refresh: ttl.clamp(self.min_ttl, self.max_ttl),
        })
    }

    /// How long after a failure the name is tried again.
    pub fn retry_after(&self) -> Duration {
        self.min_ttl
    }
}

/// Applies a resolution result to `member`; returns whether the address set changed.
fn apply(
    member: &mut DnsMember,
    pool: &str,
    result: Result<Resolution, String>,
    resolver: &DnsResolver,
) -> bool {
    match result {
        Ok(resolution) => {
            let addrs: Vec<SocketAddr> = resolution
                .ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, member.port))
                .collect();
            member.refresh = resolution.refresh;
            if addrs == member.addrs {
                return false;
            }
            tracing::info!(
                pool,
                member = %format_args!("{}:{}", member.host, member.port),
                before = ?member.addrs,
                after = ?addrs,
                next_in = ?member.refresh,
                "DNS member resolved to a new address set"
            );
            member.addrs = addrs;
            true
        }
        Err(error) => {
            member.refresh = resolver.retry_after();
            tracing::warn!(
                pool,
                member = %format_args!("{}:{}", member.host, member.port),
                %error,
                keeping = ?member.addrs,
                retry_in = ?member.refresh,
                "cannot resolve DNS member; keeping the last good addresses"
            );
            false
        }
    }
}

/// Resolves every DNS member of every pool once, concurrently (start-up). Pools without DNS
/// members are absent from the result.
pub async fn resolve_all(
    config: &Config,
    resolver: &DnsResolver,
) -> Vec<(Arc<str>, Vec<DnsMember>)> {
    let mut out = Vec::new();
    for (name, pool) in &config.backend_pools {
        let members: Vec<DnsMember> = pool
            .members
            .iter()
            .enumerate()
            .filter_map(|(entry, m)| match &m.address {
                Member::Dns { host, port } => Some(DnsMember {
                    entry,
                    host: host.clone(),
                    port: *port,
                    addrs: Vec::new(),
                    refresh: Duration::ZERO,
                }),
                Member::Addr(_) => None,
            })
            .collect();
        if !members.is_empty() {
            out.push((Arc::<str>::from(name.as_str()), members));
        }
    }
    let lookups = out
        .iter()
        .flat_map(|(_, members)| members.iter().map(|m| resolver.resolve(&m.host)));
    let results = futures_util::future::join_all(lookups).await;
    let mut results = results.into_iter();
    for (pool, members) in &mut out {
        for member in members.iter_mut() {
            if let Some(result) = results.next() {
                apply(member, pool, result, resolver);
            }
        }
    }
    out
}

/// Re-resolves one pool's DNS members on their TTLs.
pub struct ResolverActor {
    pool: Arc<str>,
    members: Vec<DnsMember>,
    resolver: Arc<DnsResolver>,
    table: Recipient<MembersResolved>,
    shutdown: ShutdownSignal,
}

impl ResolverActor {
    /// A resolver actor for `pool`'s `members` (as resolved at start-up), reporting changes to
    /// `table` and stopping when `shutdown` fires.
    pub fn new(
        pool: Arc<str>,
        members: Vec<DnsMember>,
        resolver: Arc<DnsResolver>,
        table: Recipient<MembersResolved>,
        shutdown: ShutdownSignal,
    ) -> ResolverActor {
        ResolverActor {
            pool,
            members,
            resolver,
            table,
            shutdown,
        }
    }

    fn schedule(&mut self, index: usize, ctx: &mut Context<Self>) {
        let delay = self.members[index].refresh;
        ctx.run_later(delay, move |act, ctx| act.resolve(index, ctx));
    }

    fn resolve(&mut self, index: usize, ctx: &mut Context<Self>) {
        let resolver = self.resolver.clone();
        let host = self.members[index].host.clone();
        let lookup = async move { resolver.resolve(&host).await };
        ctx.spawn(lookup.into_actor(self).map(move |result, act, ctx| {
            let member = &mut act.members[index];
            if apply(member, &act.pool, result, &act.resolver) {
                act.table.do_send(MembersResolved {
                    pool: act.pool.clone(),
                    entry: member.entry,
                    addrs: member.addrs.clone(),
                });
            }
            act.schedule(index, ctx);
        }));
    }
}

impl Actor for ResolverActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move { shutdown.fired().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );
        for index in 0..self.members.len() {
            self.schedule(index, ctx);
        }
    }
}
