//! The seven scenarios. Each returns its figures as a name → value map (the names are listed on
//! each function); the caller wraps them in a [`Record`](super::Record).
//!
//! All of them run on the load tool's single-threaded runtime: on the benchmark machine the tool
//! is pinned to one core, and one thread with non-blocking sockets drives it best.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::client::{connect, read_frame, SourceAddrs, Target, Upgrader, WsConn};
use super::frame::{
    client_close_frame, client_frame, CloseFinder, FrameScanner, NO_STATUS_CODE, OP_BINARY,
    OP_CLOSE,
};
use super::procstat::{machine_ticks, process_gone, Watched};
use super::stats::quantile;
use super::BoxError;

/// The figures of one run, by name.
pub type Metrics = BTreeMap<String, f64>;

/// How long a single handshake, echo or close may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Read buffer for connections that carry a window of messages.
const READ_BUF: usize = 64 * 1024;

/// A counter of failures that remembers the first one, for the error message.
#[derive(Debug, Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    fn record(&self, error: impl std::fmt::Display) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().expect("failure lock poisoned") = Some(error.to_string());
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Prints the first failure (if any) on stderr, so a run with errors says why.
    fn report(&self, scenario: &str) {
        if let Some(first) = self.first.lock().expect("failure lock poisoned").as_ref() {
            eprintln!("load {scenario}: {} failures; first: {first}", self.count());
        }
    }
}

/// A measurement window: the CPU and counter readings at its start and end.
struct Window {
    start: Instant,
    cpu_micros: u64,
    count: u64,
}

impl Window {
    fn open(watched: &Watched, counter: &AtomicU64) -> Result<Self, BoxError> {
        Ok(Self {
            start: Instant::now(),
            cpu_micros: watched.cpu_micros()?,
            count: counter.load(Ordering::Relaxed),
        })
    }

    /// Closes the window: (seconds, events, proxy CPU µs).
    fn close(self, watched: &Watched, counter: &AtomicU64) -> Result<(f64, u64, u64), BoxError> {
        let count = counter.load(Ordering::Relaxed);
        let cpu = watched.cpu_micros()?;
        let seconds = self.start.elapsed().as_secs_f64();
        Ok((
            seconds,
            count - self.count,
            cpu.saturating_sub(self.cpu_micros),
        ))
    }
}

/// Adds `<count>` (events in the window), `<count>_per_s`, `seconds`, and with a watched proxy
/// `cpu_us_per_<unit>`, `proxy_cpu_us` and `proxy_cpu_share` (the proxy's CPU time over wall
/// time: 1.0 is one core fully busy) to `metrics`.
fn rate_and_cost(
    metrics: &mut Metrics,
    (count, unit): (&str, &str),
    seconds: f64,
    events: u64,
    cpu_micros: u64,
    watched: &Watched,
) {
    metrics.insert(format!("{count}_per_s"), events as f64 / seconds);
    metrics.insert(count.to_owned(), events as f64);
    metrics.insert("seconds".into(), seconds);
    if !watched.is_empty() {
        metrics.insert("proxy_cpu_us".into(), cpu_micros as f64);
        metrics.insert(
            "proxy_cpu_share".into(),
            cpu_micros as f64 / (seconds * 1e6),
        );
        if events > 0 {
            metrics.insert(
                format!("cpu_us_per_{unit}"),
                cpu_micros as f64 / events as f64,
            );
        }
    }
}

/// Opens `count` WebSocket connections, one after another.
async fn open_all(
    upgrader: &Upgrader,
    sources: &SourceAddrs,
    count: usize,
) -> Result<Vec<WsConn>, BoxError> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let conn = timeout(STEP_TIMEOUT, upgrader.open(sources.next()))
            .await
            .map_err(|_| format!("upgrade to {} timed out", upgrader.target()))??;
        conns.push(conn);
    }
    Ok(conns)
}

/// Parameters of [`echo`].
#[derive(Debug, Clone)]
pub struct EchoParams {
    /// Concurrent connections.
    pub connections: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub window: usize,
    /// Run time before the measurement starts.
    pub warmup: Duration,
    /// Measured run time.
    pub duration: Duration,
}

/// Echo throughput: `connections` connections each keep `window` binary messages of `size`
/// bytes in flight, sending one more for each echo that comes back.
///
/// Figures: `msgs_per_s`, `msgs`, `seconds`, `errors`, `msgs_total` (echoes over the whole run,
/// warm-up included: what a tracer attached for the whole run saw), `client_msgs_per_read`
/// (echoes per read of the load tool in the window), `steal_share` (the machine's stolen CPU
/// time over all its CPU time in the window), and with a watched proxy
/// `cpu_us_per_msg` (proxy CPU µs per echoed message), `proxy_cpu_us`, `proxy_cpu_share`.
pub async fn echo(
    upgrader: &Upgrader,
    watched: &Watched,
    params: &EchoParams,
) -> Result<Metrics, BoxError> {
    let sources = SourceAddrs::new();
    let conns = open_all(upgrader, &sources, params.connections).await?;
    let frame = client_frame(OP_BINARY, &vec![b'x'; params.size]);
    let batch: Arc<[u8]> = frame.repeat(params.window).into();
    let frame_len = frame.len();

    let echoed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    let measure_from = Instant::now() + params.warmup;
    let end = measure_from + params.duration;
    let mut tasks = JoinSet::new();
    for conn in conns {
        let (batch, echoed, failures) = (batch.clone(), echoed.clone(), failures.clone());
        let reads = reads.clone();
        let (size, window) = (params.size as u64, params.window);
        tasks.spawn(async move {
            let counters = EchoCounters {
                echoed: &echoed,
                reads: &reads,
            };
            let result =
                echo_connection(conn, &batch, frame_len, window, size, counters, end).await;
            if let Err(error) = result {
                failures.record(error);
            }
        });
    }

    sleep_until(measure_from).await;
    let reads_before = reads.load(Ordering::Relaxed);
    let ticks_before = machine_ticks()?;
    let window = Window::open(watched, &echoed)?;
    sleep_until(end).await;
    let (seconds, msgs, cpu) = window.close(watched, &echoed)?;
    let ticks_after = machine_ticks()?;
    let window_reads = reads.load(Ordering::Relaxed) - reads_before;
    while tasks.join_next().await.is_some() {}

    failures.report("echo");
    let mut metrics = Metrics::new();
    rate_and_cost(&mut metrics, ("msgs", "msg"), seconds, msgs, cpu, watched);
    metrics.insert("msgs_total".into(), echoed.load(Ordering::Relaxed) as f64);
    // What tells a fast run from a slow one (bench/README.md, "4 KiB bistability"): how many
    // echoes each read of the load tool brought back, and whether the hypervisor stole time.
    if msgs > 0 {
        metrics.insert(
            "client_msgs_per_read".into(),
            msgs as f64 / window_reads.max(1) as f64,
        );
    }
    let all = ticks_after.0.saturating_sub(ticks_before.0);
    if all > 0 {
        metrics.insert(
            "steal_share".into(),
            ticks_after.1.saturating_sub(ticks_before.1) as f64 / all as f64,
        );
    }
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// One connection of [`echo`]: sends a window, then one message per echo, until `end`.
/// The counters every connection of [`echo`] adds to.
#[derive(Clone, Copy)]
struct EchoCounters<'a> {
    /// Echoes received.
    echoed: &'a AtomicU64,
    /// Reads that returned bytes.
    reads: &'a AtomicU64,
}

async fn echo_connection(
    conn: WsConn,
    batch: &[u8],
    frame_len: usize,
    window: usize,
    size: u64,
    counters: EchoCounters<'_>,
    end: Instant,
) -> Result<(), BoxError> {
    let WsConn { mut stream, early } = conn;
    let mut scanner = FrameScanner::new();
    let mut wrong_size = false;
    // Nothing has been sent yet, so a data frame here would be the server's own; keep the
    // scanner in step with the stream all the same.
    scanner.feed(&early, |_| {})?;
    stream.write_all(batch).await?;
    let mut buf = vec![0u8; READ_BUF];
    let stop = sleep_until(end);
    tokio::pin!(stop);
    loop {
        let n = tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            read = stream.read(&mut buf) => read?,
        };
        if n == 0 {
            return Err("the proxy closed an echo connection".into());
        }
        let mut k = 0usize;
        scanner.feed(&buf[..n], |h| {
            if h.is_data() {
                k += 1;
                wrong_size |= h.payload_len != size;
            }
        })?;
        if wrong_size {
            return Err("an echo came back with the wrong size".into());
        }
        counters.echoed.fetch_add(k as u64, Ordering::Relaxed);
        counters.reads.fetch_add(1, Ordering::Relaxed);
        // At most `window` messages are in flight, so at most that many can come back.
        let resend = k.min(window);
        if resend > 0 {
            stream.write_all(&batch[..resend * frame_len]).await?;
        }
    }
}

/// Parameters of [`latency`].
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Connections the messages are spread over, round-robin.
    pub connections: usize,
    /// Total messages per second.
    pub rate: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Run time before the measurement starts.
    pub warmup: Duration,
    /// Measured run time.
    pub duration: Duration,
}

/// Added latency: `rate` messages per second in total, spread round-robin over `connections`
/// connections, each message's round trip timed from just before its write to the read that
/// completes its echo. Sending is open-loop (it never waits for echoes), so a slow proxy cannot
/// slow the sender down and hide its own delay.
///
/// The timer ticks every millisecond (tokio's timer resolution) and sends the messages due by
/// then, so at 5,000 msg/s messages leave in bursts of about five, each to a different
/// connection. The direct baseline sees the same bursts.
///
/// Figures: `p50_us`, `p99_us`, `p999_us`, `max_us`, `samples`, `sent_per_s` (the rate achieved),
/// `lost` (echoes missing 2 s after the last send), `errors`.
pub async fn latency(upgrader: &Upgrader, params: &LatencyParams) -> Result<Metrics, BoxError> {
    let sources = SourceAddrs::new();
    let conns = open_all(upgrader, &sources, params.connections).await?;
    let frame = client_frame(OP_BINARY, &vec![b'x'; params.size]);

    let start = Instant::now();
    let measure_from = start + params.warmup;
    let end = measure_from + params.duration;
    let drain_until = end + Duration::from_secs(2);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let failures = Arc::new(Failures::default());

    let mut writers: Vec<(OwnedWriteHalf, Arc<Mutex<VecDeque<Instant>>>)> = Vec::new();
    let mut readers = JoinSet::new();
    for WsConn { stream, early } in conns {
        let (mut read, write) = stream.into_split();
        let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        writers.push((write, sent.clone()));
        let (mut done_rx, failures) = (done_rx.clone(), failures.clone());
        let size = params.size as u64;
        readers.spawn(async move {
            let mut rtts = Vec::new();
            let mut scanner = FrameScanner::new();
            let mut buf = vec![0u8; READ_BUF];
            let mut sending_done = false;
            let drain = sleep_until(drain_until);
            tokio::pin!(drain);
            let mut on_bytes = |bytes: &[u8], rtts: &mut Vec<u64>| -> Result<(), BoxError> {
                let now = Instant::now();
                let mut sent = sent.lock().expect("latency queue lock poisoned");
                let mut bad = None;
                scanner.feed(bytes, |h| {
                    if !h.is_data() {
                        return;
                    }
                    if h.payload_len != size {
                        bad = Some("an echo came back with the wrong size");
                    }
                    match sent.pop_front() {
                        Some(at) if at >= measure_from && at < end => {
                            rtts.push((now - at).as_nanos() as u64);
                        }
                        Some(_) => {}
                        None => bad = Some("an echo arrived that was never sent"),
                    }
                })?;
                match bad {
                    Some(error) => Err(error.into()),
                    None => Ok(()),
                }
            };
            if let Err(error) = on_bytes(&early, &mut rtts) {
                failures.record(error);
                return (rtts, 0);
            }
            loop {
                let outstanding = sent.lock().expect("latency queue lock poisoned").len();
                if sending_done && outstanding == 0 {
                    return (rtts, 0);
                }
                let n = tokio::select! {
                    biased;
                    () = &mut drain => return (rtts, outstanding as u64),
                    changed = done_rx.changed(), if !sending_done => {
                        // Sending is over (or the sender is gone): drain what is in flight.
                        let _ = changed;
                        sending_done = true;
                        continue;
                    }
                    read = read.read(&mut buf) => match read {
                        Ok(n) => n,
                        Err(error) => {
                            failures.record(error);
                            return (rtts, outstanding as u64);
                        }
                    },
                };
                if n == 0 {
                    failures.record("the proxy closed a latency connection");
                    return (rtts, outstanding as u64);
                }
                if let Err(error) = on_bytes(&buf[..n], &mut rtts) {
                    failures.record(error);
                    return (rtts, 0);
                }
            }
        });
    }

    // The fixed-rate sender: every millisecond, send the messages due by now.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent_total, mut sent_measured) = (0u64, 0u64);
    let mut next_conn = 0usize;
    loop {
        let now = tick.tick().await;
        if now >= end {
            break;
        }
        let due = ((now - start).as_secs_f64() * params.rate as f64) as u64;
        while sent_total < due {
            let (write, sent) = &mut writers[next_conn];
            next_conn = (next_conn + 1) % params.connections;
            let at = Instant::now();
            sent.lock()
                .expect("latency queue lock poisoned")
                .push_back(at);
            if let Err(error) = write.write_all(&frame).await {
                failures.record(error);
                sent.lock().expect("latency queue lock poisoned").pop_back();
            }
            sent_total += 1;
            if at >= measure_from {
                sent_measured += 1;
            }
        }
    }
    // `send` only fails once every reader has already ended, which is fine.
    let _ = done_tx.send(true);

    let mut rtts = Vec::new();
    let mut lost = 0;
    while let Some(joined) = readers.join_next().await {
        let (mut conn_rtts, conn_lost) = joined?;
        rtts.append(&mut conn_rtts);
        lost += conn_lost;
    }
    drop(writers);
    rtts.sort_unstable();

    failures.report("latency");
    let micros = |q: f64| quantile(&rtts, q).map_or(f64::NAN, |ns| ns as f64 / 1e3);
    let mut metrics = Metrics::new();
    metrics.insert("p50_us".into(), micros(0.5));
    metrics.insert("p99_us".into(), micros(0.99));
    metrics.insert("p999_us".into(), micros(0.999));
    metrics.insert("max_us".into(), micros(1.0));
    metrics.insert("samples".into(), rtts.len() as f64);
    metrics.insert(
        "sent_per_s".into(),
        sent_measured as f64 / params.duration.as_secs_f64(),
    );
    metrics.insert("lost".into(), lost as f64);
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// Parameters of [`handshake`].
#[derive(Debug, Clone)]
pub struct HandshakeParams {
    /// Concurrent workers, each doing one handshake after another.
    pub workers: usize,
    /// Payload bytes of the one echoed message.
    pub size: usize,
    /// Run time before the measurement starts.
    pub warmup: Duration,
    /// Measured run time.
    pub duration: Duration,
}

/// Handshake rate: `workers` workers each loop over connect, upgrade, one echoed message, a
/// close handshake (client close 1000, wait for the server's close frame), and closing the
/// socket. Every connection comes from a different source address in `127.0.0.0/8`.
///
/// Figures: `handshakes_per_s`, `handshakes`, `seconds`, `errors`, `handshakes_total` (cycles
/// completed over the whole run, warm-up and the last cycles after the window included), and
/// with a watched proxy `cpu_us_per_handshake`, `proxy_cpu_us`, `proxy_cpu_share`.
pub async fn handshake(
    upgrader: &Upgrader,
    watched: &Watched,
    params: &HandshakeParams,
) -> Result<Metrics, BoxError> {
    let sources = Arc::new(SourceAddrs::new());
    let upgrader = Arc::new(upgrader.clone());
    let message: Arc<[u8]> = client_frame(OP_BINARY, &vec![b'x'; params.size]).into();
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    let measure_from = Instant::now() + params.warmup;
    let end = measure_from + params.duration;

    let mut tasks = JoinSet::new();
    for _ in 0..params.workers {
        let (sources, upgrader, message) = (sources.clone(), upgrader.clone(), message.clone());
        let (done, failures) = (done.clone(), failures.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
                let once = one_handshake(&upgrader, sources.next(), &message);
                match timeout(STEP_TIMEOUT, once).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => failures.record(error),
                    Err(_) => failures.record("a handshake cycle timed out"),
                }
            }
        });
    }

    sleep_until(measure_from).await;
    let window = Window::open(watched, &done)?;
    sleep_until(end).await;
    let (seconds, handshakes, cpu) = window.close(watched, &done)?;
    while tasks.join_next().await.is_some() {}

    failures.report("handshake");
    let mut metrics = Metrics::new();
    rate_and_cost(
        &mut metrics,
        ("handshakes", "handshake"),
        seconds,
        handshakes,
        cpu,
        watched,
    );
    metrics.insert(
        "handshakes_total".into(),
        done.load(Ordering::Relaxed) as f64,
    );
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// One connect–upgrade–echo–close cycle.
async fn one_handshake(
    upgrader: &Upgrader,
    source: std::net::Ipv4Addr,
    message: &[u8],
) -> Result<(), BoxError> {
    let WsConn {
        mut stream,
        mut early,
    } = upgrader.open(source).await?;
    let mut scanner = FrameScanner::new();
    stream.write_all(message).await?;
    read_frame(&mut stream, &mut early, &mut scanner, |h| h.is_data()).await?;
    stream.write_all(&client_close_frame()).await?;
    read_frame(&mut stream, &mut early, &mut scanner, |h| {
        h.opcode() == OP_CLOSE
    })
    .await?;
    Ok(())
}

/// Opens up to `sessions` WebSocket sessions, each from its own source address in
/// `127.0.0.0/8`, with `concurrency` upgrades in flight. Failures are recorded; after 50 in a
/// row (out of descriptors or ports somewhere) it stops trying and returns what it has.
async fn open_many(
    upgrader: &Arc<Upgrader>,
    sources: &Arc<SourceAddrs>,
    sessions: usize,
    concurrency: usize,
    failures: &Failures,
) -> Result<Vec<WsConn>, BoxError> {
    let mut conns = Vec::with_capacity(sessions);
    let mut in_flight = JoinSet::new();
    let mut launched = 0;
    let mut consecutive_failures = 0;
    while launched < sessions || !in_flight.is_empty() {
        while launched < sessions && in_flight.len() < concurrency.max(1) {
            let (sources, upgrader) = (sources.clone(), upgrader.clone());
            in_flight.spawn(async move {
                match timeout(STEP_TIMEOUT, upgrader.open(sources.next())).await {
                    Ok(result) => result,
                    Err(_) => Err("upgrade timed out".into()),
                }
            });
            launched += 1;
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        match joined? {
            Ok(conn) => {
                conns.push(conn);
                consecutive_failures = 0;
            }
            Err(error) => {
                failures.record(error);
                consecutive_failures += 1;
                if consecutive_failures >= 50 {
                    launched = sessions;
                }
            }
        }
    }
    Ok(conns)
}

/// RSS growth per session in KiB (`None` when no session opened).
fn kib_per_session(rss_base: u64, rss: u64, sessions: usize) -> Option<f64> {
    (sessions > 0).then(|| (rss as f64 - rss_base as f64) / sessions as f64)
}

/// Parameters of [`idle`].
#[derive(Debug, Clone)]
pub struct IdleParams {
    /// Sessions to open.
    pub sessions: usize,
    /// Upgrades in flight while opening.
    pub concurrency: usize,
}

/// Idle sessions opened for a measurement, with the proxy's RSS before and after opening them.
struct OpenedIdle {
    conns: Vec<WsConn>,
    failures: Failures,
    rss_base: u64,
    rss_idle: u64,
    open_seconds: f64,
}

/// Reads the proxy's RSS, opens `sessions` sessions (each from its own source address,
/// `concurrency` upgrades at a time), and reads the RSS again.
async fn open_idle(
    upgrader: &Upgrader,
    watched: &Watched,
    sessions: usize,
    concurrency: usize,
) -> Result<OpenedIdle, BoxError> {
    let sources = Arc::new(SourceAddrs::new());
    let upgrader = Arc::new(upgrader.clone());
    let failures = Failures::default();
    let rss_base = watched.rss_kib()?;
    let opening = Instant::now();
    let conns = open_many(&upgrader, &sources, sessions, concurrency, &failures).await?;
    let open_seconds = opening.elapsed().as_secs_f64();
    let rss_idle = watched.rss_kib()?;
    Ok(OpenedIdle {
        conns,
        failures,
        rss_base,
        rss_idle,
        open_seconds,
    })
}

/// Idle memory: opens `sessions` sessions (each from its own source address, `concurrency` at a
/// time), reads the proxy's RSS, then sends one message on every session and waits for every
/// echo, and reads the RSS again.
///
/// Figures: `sessions` (requested), `opened`, `alive` (sessions that echoed), `rss_base_kib`,
/// `rss_idle_kib`, `rss_after_echo_kib`, `kib_per_session` (growth per open session, while
/// idle), `kib_per_session_after_echo` (growth per session once every session has carried a
/// message and gone idle again: buffers a proxy keeps after traffic show here), `open_seconds`,
/// `close_seconds` (until the proxy's descriptor count is back to where it started), `errors`.
pub async fn idle(
    upgrader: &Upgrader,
    watched: &Watched,
    params: &IdleParams,
) -> Result<Metrics, BoxError> {
    let fds_base = watched.open_fds()?;
    let OpenedIdle {
        conns,
        failures,
        rss_base,
        rss_idle,
        open_seconds,
    } = open_idle(upgrader, watched, params.sessions, params.concurrency).await?;
    let opened = conns.len();

    let message: Arc<[u8]> = client_frame(OP_BINARY, b"are you alive?").into();
    let mut echoes = JoinSet::new();
    for conn in conns {
        let message = message.clone();
        echoes.spawn(async move {
            let WsConn {
                mut stream,
                mut early,
            } = conn;
            let cycle = async {
                stream.write_all(&message).await?;
                let mut scanner = FrameScanner::new();
                read_frame(&mut stream, &mut early, &mut scanner, |h| h.is_data()).await?;
                Ok::<_, BoxError>(())
            };
            let result = match timeout(Duration::from_secs(30), cycle).await {
                Ok(result) => result,
                Err(_) => Err("no echo within 30 s".into()),
            };
            (stream, result)
        });
    }
    let mut streams = Vec::with_capacity(opened);
    let mut alive = 0u64;
    while let Some(joined) = echoes.join_next().await {
        let (stream, result) = joined?;
        match result {
            Ok(()) => alive += 1,
            Err(error) => failures.record(error),
        }
        streams.push(stream);
    }
    let rss_after = watched.rss_kib()?;

    // Close every session, and wait until the proxy has let go of them (its descriptor count is
    // back near where it started), so that closing them does not spill into the next run.
    drop(streams);
    let closing = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    while watched.open_fds()? > fds_base + 16 {
        if closing.elapsed() > Duration::from_secs(10) {
            failures
                .record("the proxy still held the sessions' descriptors 10 s after they closed");
            break;
        }
        poll.tick().await;
    }
    let close_seconds = closing.elapsed().as_secs_f64();

    failures.report("idle");
    let per_session = |rss: u64| kib_per_session(rss_base, rss, opened).unwrap_or(f64::NAN);
    let mut metrics = Metrics::new();
    metrics.insert("sessions".into(), params.sessions as f64);
    metrics.insert("opened".into(), opened as f64);
    metrics.insert("alive".into(), alive as f64);
    metrics.insert("rss_base_kib".into(), rss_base as f64);
    metrics.insert("rss_idle_kib".into(), rss_idle as f64);
    metrics.insert("rss_after_echo_kib".into(), rss_after as f64);
    metrics.insert("kib_per_session".into(), per_session(rss_idle));
    metrics.insert("kib_per_session_after_echo".into(), per_session(rss_after));
    metrics.insert("open_seconds".into(), open_seconds);
    metrics.insert("close_seconds".into(), close_seconds);
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// Parameters of [`idle_http`].
#[derive(Debug, Clone)]
pub struct IdleHttpParams {
    /// Plain connections to open.
    pub connections: usize,
    /// Connects in flight while opening.
    pub concurrency: usize,
    /// How long to wait, from the first connect, for the proxy to accept every connection
    /// ([`ACCEPT_WAIT`] in the load tool).
    pub accept_wait: Duration,
}

/// How long [`idle_http`] waits for the proxy to accept every connection it opened. Below the
/// 10 s request-head timeouts of HAProxy and Tether, so connections are measured before a proxy
/// may close them for sending nothing.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(8);

/// Idle HTTP memory: opens `connections` plain TCP connections to the proxy (each from its own
/// source address in `127.0.0.0/8`, `concurrency` connects in flight), sends nothing on them,
/// waits until the proxy holds a descriptor for every one (it has accepted them), and reads the
/// proxy's RSS growth per connection. This is what a client that opened a keep-alive connection
/// and has not sent its first request yet costs the proxy.
///
/// The connections must be read before the proxy's request-head timeout closes them (10 s for
/// HAProxy's `timeout http-request` and Tether's `request_head_timeout`, 60 s for nginx's
/// `client_header_timeout`): accepting is bounded by 8 s, and afterwards every connection is
/// checked to be still open (a non-blocking read that would block), so a proxy that closed
/// some shows fewer `alive`.
///
/// Figures: `connections` (requested), `opened`, `accepted` (the proxy's descriptor growth when
/// the RSS was read), `alive` (still open after the reading), `rss_base_kib`, `rss_idle_kib`,
/// `kib_per_conn` (RSS growth per opened connection), `open_seconds`, `errors`.
pub async fn idle_http(
    target: &Target,
    watched: &Watched,
    params: &IdleHttpParams,
) -> Result<Metrics, BoxError> {
    let fds_base = watched.open_fds()?;
    let rss_base = watched.rss_kib()?;
    let sources = Arc::new(SourceAddrs::new());
    let failures = Failures::default();
    let opening = Instant::now();
    let mut conns = Vec::with_capacity(params.connections);
    let mut in_flight = JoinSet::new();
    let (mut launched, mut consecutive_failures) = (0, 0);
    while launched < params.connections || !in_flight.is_empty() {
        while launched < params.connections && in_flight.len() < params.concurrency.max(1) {
            let (sources, target) = (sources.clone(), target.clone());
            in_flight.spawn(async move {
                match timeout(STEP_TIMEOUT, connect(&target, sources.next())).await {
                    Ok(result) => result.map_err(BoxError::from),
                    Err(_) => Err("connect timed out".into()),
                }
            });
            launched += 1;
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        match joined? {
            Ok(conn) => {
                conns.push(conn);
                consecutive_failures = 0;
            }
            Err(error) => {
                failures.record(error);
                consecutive_failures += 1;
                if consecutive_failures >= 50 {
                    launched = params.connections;
                }
            }
        }
    }
    let open_seconds = opening.elapsed().as_secs_f64();
    let opened = conns.len() as u64;

    // A connect completes once the kernel has queued the connection; the proxy holds it once it
    // has accepted it. Wait (bounded) until its descriptor count shows every one.
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    let accepted = loop {
        poll.tick().await;
        let held = watched.open_fds()?.saturating_sub(fds_base);
        if held >= opened {
            break held;
        }
        if opening.elapsed() > params.accept_wait {
            failures.record(format!(
                "the proxy had accepted {held} of {opened} connections after {:?}",
                params.accept_wait
            ));
            break held;
        }
    };
    let rss_idle = watched.rss_kib()?;
    let mut alive = 0u64;
    let mut probe = [0u8; 1];
    for conn in &conns {
        match conn.try_read(&mut probe) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => alive += 1,
            Ok(0) => failures.record("the proxy closed an idle connection"),
            Ok(_) => failures.record("the proxy sent bytes on a connection without a request"),
            Err(error) => failures.record(error),
        }
    }

    // Close them, and wait until the proxy has let go (bounded), so that closing them does not
    // spill into the next run.
    drop(conns);
    let closing = Instant::now();
    while watched.open_fds()? > fds_base + 16 {
        if closing.elapsed() > Duration::from_secs(10) {
            failures.record("the proxy still held the connections 10 s after they closed");
            break;
        }
        poll.tick().await;
    }

    failures.report("idle_http");
    let mut metrics = Metrics::new();
    metrics.insert("connections".into(), params.connections as f64);
    metrics.insert("opened".into(), opened as f64);
    metrics.insert("accepted".into(), accepted as f64);
    metrics.insert("alive".into(), alive as f64);
    metrics.insert("rss_base_kib".into(), rss_base as f64);
    metrics.insert("rss_idle_kib".into(), rss_idle as f64);
    if opened > 0 {
        metrics.insert(
            "kib_per_conn".into(),
            (rss_idle as f64 - rss_base as f64) / opened as f64,
        );
    }
    metrics.insert("open_seconds".into(), open_seconds);
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// How long after `shutdown_grace` the sessions of [`drain`] keep waiting for a close frame.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// How long after `shutdown_grace` [`drain`] keeps waiting for the proxy process to exit.
const EXIT_MARGIN: Duration = Duration::from_secs(10);

/// How often [`drain`] checks whether the proxy process has exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Parameters of [`drain`].
#[derive(Debug, Clone)]
pub struct DrainParams {
    /// Sessions to open.
    pub sessions: usize,
    /// Upgrades in flight while opening.
    pub concurrency: usize,
    /// The proxy's shutdown grace period (Tether's `shutdown_grace`): the time every session has
    /// to get its close frame. Sessions wait 5 s longer, the exit 10 s longer, so that a late
    /// close or exit is measured, not cut off.
    pub grace: Duration,
}

/// How one session of [`drain`] ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// A close frame with `code` arrived at `at`; `tcp_closed`: the proxy then closed the
    /// connection (after the client's close reply) before the deadline.
    Close {
        /// The status code (1005 when the frame carried none).
        code: u16,
        /// When the load tool read the frame.
        at: Instant,
        /// Whether the connection ended afterwards.
        tcp_closed: bool,
    },
    /// The connection ended (end of stream, reset, or a framing error) without a close frame.
    Cut {
        /// When it ended.
        at: Instant,
        /// Why, for the error message.
        why: String,
    },
    /// Neither a close frame nor the end of the connection by the deadline.
    Open,
}

/// Drain at shutdown: opens `sessions` idle sessions (as [`idle`] does: each from its own
/// source address), reads the proxy's RSS, sends SIGTERM to the proxy (the first `--pid`), and
/// watches every session until its close frame arrives and the proxy closes the connection.
/// Each session answers the close frame with one carrying the same code (as a well-behaved
/// client does), so the proxy can finish the close handshake.
///
/// Times are measured from just before `kill -TERM` is started (so they include starting
/// `kill`, about a millisecond) to when the load tool read the frame: with thousands of
/// sessions on one thread, that is an upper bound on when the proxy sent it. The proxy's exit
/// is polled every 5 ms (`/proc/<pid>` gone, or a zombie waiting for its parent).
///
/// Figures: `sessions` (requested), `opened`, `rss_base_kib`, `rss_idle_kib`, `kib_per_session`
/// (RSS growth per open session), `open_seconds`, `grace_seconds`, and from [`tally_drain`]:
/// `drained`, `close_1001`, `close_1012`, `close_other`, `drained_within_grace`,
/// `first_close_seconds`, `drain_seconds`, `tcp_closed`, `closed_before_signal`, `cut`,
/// `still_open`, `no_close`; then `exited` (1 if the proxy exited within the grace period plus
/// 10 s), `exit_seconds` (SIGTERM to exit, when it exited), `errors` (sessions that failed to
/// open).
pub async fn drain(
    upgrader: &Upgrader,
    watched: &Watched,
    params: &DrainParams,
) -> Result<Metrics, BoxError> {
    let pid = *watched
        .pids()
        .first()
        .ok_or("drain needs --pid: the proxy process to send SIGTERM to")?;
    if pid <= 1 || pid == std::process::id() {
        return Err(format!("refusing to send SIGTERM to pid {pid}").into());
    }
    if process_gone(pid) {
        return Err(format!("process {pid} is not running").into());
    }
    let OpenedIdle {
        conns,
        failures,
        rss_base,
        rss_idle,
        open_seconds,
    } = open_idle(upgrader, watched, params.sessions, params.concurrency).await?;
    let opened = conns.len();

    let deadline = Instant::now() + params.grace + DRAIN_MARGIN;
    let mut sessions = JoinSet::new();
    for conn in conns {
        sessions.spawn(await_close(conn, deadline));
    }
    // On the current-thread runtime this lets every session task run to its first read, so
    // that close frames are read as they arrive.
    tokio::task::yield_now().await;

    let signal = Instant::now();
    send_sigterm(pid).await?;
    let exit = tokio::spawn(wait_exit(pid, signal + params.grace + EXIT_MARGIN));
    let mut ends = Vec::with_capacity(opened);
    while let Some(joined) = sessions.join_next().await {
        ends.push(joined?);
    }
    let exited_at = exit.await??;

    let cut_reasons = Failures::default();
    for end in &ends {
        if let SessionEnd::Cut { why, .. } = end {
            cut_reasons.record(why);
        }
    }
    failures.report("drain");
    cut_reasons.report("drain (sessions cut without a close frame)");
    let mut metrics = tally_drain(&ends, signal, params.grace);
    metrics.insert("sessions".into(), params.sessions as f64);
    metrics.insert("opened".into(), opened as f64);
    metrics.insert("rss_base_kib".into(), rss_base as f64);
    metrics.insert("rss_idle_kib".into(), rss_idle as f64);
    if let Some(kib) = kib_per_session(rss_base, rss_idle, opened) {
        metrics.insert("kib_per_session".into(), kib);
    }
    metrics.insert("open_seconds".into(), open_seconds);
    metrics.insert("grace_seconds".into(), params.grace.as_secs_f64());
    metrics.insert("exited".into(), f64::from(u8::from(exited_at.is_some())));
    if let Some(at) = exited_at {
        metrics.insert("exit_seconds".into(), (at - signal).as_secs_f64());
    }
    metrics.insert("errors".into(), failures.count() as f64);
    Ok(metrics)
}

/// One session of [`drain`]: waits for the proxy's close frame, answers it, and waits for the
/// proxy to close the connection, all before `deadline`.
async fn await_close(conn: WsConn, deadline: Instant) -> SessionEnd {
    let WsConn { mut stream, early } = conn;
    let mut finder = CloseFinder::new();
    let mut buf = [0u8; 512];
    let mut found = finder.feed(&early);
    let code = loop {
        match found {
            Ok(Some(code)) => break code,
            Ok(None) => {}
            Err(error) => {
                return SessionEnd::Cut {
                    at: Instant::now(),
                    why: error.to_string(),
                }
            }
        }
        found = match timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return SessionEnd::Open,
            Ok(Ok(0)) => {
                return SessionEnd::Cut {
                    at: Instant::now(),
                    why: "the connection ended without a close frame".into(),
                }
            }
            Ok(Ok(n)) => finder.feed(&buf[..n]),
            Ok(Err(error)) => {
                return SessionEnd::Cut {
                    at: Instant::now(),
                    why: error.to_string(),
                }
            }
        };
    };
    let at = Instant::now();
    let reply = if code == NO_STATUS_CODE {
        client_frame(OP_CLOSE, &[])
    } else {
        client_frame(OP_CLOSE, &code.to_be_bytes())
    };
    // The proxy may already have closed the connection; the close frame is what counts.
    let _ = timeout_at(deadline, stream.write_all(&reply)).await;
    let tcp_closed = loop {
        match timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    SessionEnd::Close {
        code,
        at,
        tcp_closed,
    }
}

/// Sends SIGTERM to `pid` with `kill` (no extra dependency for one signal).
async fn send_sigterm(pid: u32) -> Result<(), BoxError> {
    let status = timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .map_err(|_| "kill -TERM did not finish in time")?
    .map_err(|error| format!("cannot run kill: {error}"))?;
    if !status.success() {
        return Err(format!("kill -TERM {pid} failed ({status})").into());
    }
    Ok(())
}

/// Polls until `pid` has exited (see [`process_gone`]), for at most until `deadline`: the
/// instant it was first seen gone, or `None`.
async fn wait_exit(pid: u32, deadline: Instant) -> Result<Option<Instant>, BoxError> {
    let mut poll = tokio::time::interval(EXIT_POLL);
    loop {
        poll.tick().await;
        if process_gone(pid) {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// The drain figures from how each session ended, with times in seconds after `signal`:
/// `drained` (close frames after the signal), `close_1001`, `close_1012`, `close_other` (their
/// codes), `drained_within_grace`, `first_close_seconds` and `drain_seconds` (the first and the
/// last close frame; absent without any), `tcp_closed` (drained sessions whose connection the
/// proxy then closed), `closed_before_signal` (close frames before the signal: not a drain),
/// `cut` (ended without a close frame), `still_open` (nothing by the deadline) and `no_close`
/// (`cut` + `still_open`).
pub fn tally_drain(ends: &[SessionEnd], signal: Instant, grace: Duration) -> Metrics {
    let mut counts: BTreeMap<&str, u64> = [
        "drained",
        "close_1001",
        "close_1012",
        "close_other",
        "drained_within_grace",
        "tcp_closed",
        "closed_before_signal",
        "cut",
        "still_open",
    ]
    .into_iter()
    .map(|name| (name, 0))
    .collect();
    let mut bump = |name| *counts.get_mut(name).expect("every counter is listed") += 1;
    let mut first: Option<Duration> = None;
    let mut last: Option<Duration> = None;
    for end in ends {
        match end {
            SessionEnd::Close {
                code,
                at,
                tcp_closed,
            } => {
                let Some(after) = at.checked_duration_since(signal) else {
                    bump("closed_before_signal");
                    continue;
                };
                bump("drained");
                bump(match code {
                    1001 => "close_1001",
                    1012 => "close_1012",
                    _ => "close_other",
                });
                if after <= grace {
                    bump("drained_within_grace");
                }
                if *tcp_closed {
                    bump("tcp_closed");
                }
                first = Some(first.map_or(after, |f| f.min(after)));
                last = Some(last.map_or(after, |l| l.max(after)));
            }
            SessionEnd::Cut { .. } => bump("cut"),
            SessionEnd::Open => bump("still_open"),
        }
    }
    let no_close = counts["cut"] + counts["still_open"];
    let mut metrics: Metrics = counts
        .into_iter()
        .map(|(name, count)| (name.to_owned(), count as f64))
        .collect();
    metrics.insert("no_close".into(), no_close as f64);
    if let (Some(first), Some(last)) = (first, last) {
        metrics.insert("first_close_seconds".into(), first.as_secs_f64());
        metrics.insert("drain_seconds".into(), last.as_secs_f64());
    }
    metrics
}

/// Parameters of [`http`].
#[derive(Debug, Clone)]
pub struct HttpParams {
    /// Keep-alive connections (`wrk -c`).
    pub connections: usize,
    /// `wrk` threads (`wrk -t`).
    pub threads: usize,
    /// Run time (`wrk -d`, whole seconds, at least one).
    pub duration: Duration,
}

/// Plain HTTP: runs `wrk` (keep-alive, small response) against `target` and reads the proxy's
/// CPU time before and after.
///
/// Figures: `reqs_per_s` (as `wrk` reports it), `reqs`, `seconds`, `errors` (non-2xx/3xx
/// responses plus socket errors), and with a watched proxy `cpu_us_per_req`, `proxy_cpu_us`,
/// `proxy_cpu_share`.
pub async fn http(
    target: &Target,
    watched: &Watched,
    params: &HttpParams,
) -> Result<Metrics, BoxError> {
    let seconds = params.duration.as_secs().max(1);
    let url = format!("http://{}{}", target.addr, target.path);
    let mut command = tokio::process::Command::new("wrk");
    command
        .arg(format!("-t{}", params.threads.max(1)))
        .arg(format!(
            "-c{}",
            params.connections.max(params.threads.max(1))
        ))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "2s"])
        .arg(&url)
        .kill_on_drop(true);
    let cpu_before = watched.cpu_micros()?;
    let started = Instant::now();
    let output = timeout(Duration::from_secs(seconds + 30), command.output())
        .await
        .map_err(|_| "wrk did not finish in time")?
        .map_err(|error| format!("cannot run wrk (install the wrk package): {error}"))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = watched.cpu_micros()?.saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let summary = parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;

    let mut metrics = Metrics::new();
    // CPU per request uses the whole wrk run (connection set-up included) and all its requests.
    rate_and_cost(
        &mut metrics,
        ("reqs", "req"),
        wall,
        summary.requests,
        cpu,
        watched,
    );
    metrics.insert("reqs_per_s".into(), summary.requests_per_sec);
    metrics.insert("errors".into(), summary.errors as f64);
    Ok(metrics)
}

/// What the benchmark reads from `wrk`'s output.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkSummary {
    /// Total requests completed.
    pub requests: u64,
    /// `Requests/sec`.
    pub requests_per_sec: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// Parses `wrk`'s report.
pub fn parse_wrk(text: &str) -> Option<WrkSummary> {
    let mut requests = None;
    let mut requests_per_sec = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse().ok();
        } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = rate.trim().parse().ok();
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += count.trim().parse::<u64>().ok()?;
        } else if let Some(list) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for item in list.split(',') {
                errors += item.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
    }
    Some(WrkSummary {
        requests: requests?,
        requests_per_sec: requests_per_sec?,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_drain_endings() {
        let base = Instant::now();
        let signal = base + Duration::from_secs(1);
        let at = |ms| signal + Duration::from_millis(ms);
        let ends = vec![
            SessionEnd::Close {
                code: 1001,
                at: at(10),
                tcp_closed: true,
            },
            SessionEnd::Close {
                code: 1001,
                at: at(300),
                tcp_closed: false,
            },
            // After a 2 s grace period.
            SessionEnd::Close {
                code: 1012,
                at: at(2500),
                tcp_closed: true,
            },
            SessionEnd::Close {
                code: 1000,
                at: base,
                tcp_closed: true,
            },
            SessionEnd::Cut {
                at: at(5),
                why: "reset".into(),
            },
            SessionEnd::Open,
        ];
        let m = tally_drain(&ends, signal, Duration::from_secs(2));
        let expected = [
            ("drained", 3.0),
            ("close_1001", 2.0),
            ("close_1012", 1.0),
            ("close_other", 0.0),
            ("drained_within_grace", 2.0),
            ("tcp_closed", 2.0),
            ("closed_before_signal", 1.0),
            ("cut", 1.0),
            ("still_open", 1.0),
            ("no_close", 2.0),
            ("first_close_seconds", 0.01),
            ("drain_seconds", 2.5),
        ];
        for (name, value) in expected {
            assert!((m[name] - value).abs() < 1e-9, "{name}: {}", m[name]);
        }
        assert_eq!(m.len(), expected.len());

        let none = tally_drain(&[], signal, Duration::from_secs(2));
        assert_eq!(none["drained"], 0.0);
        assert!(!none.contains_key("drain_seconds"));
    }

    /// The drain end to end: a child process (`sleep`) stands for the proxy's pid, and a
    /// WebSocket server in this test sends every session a close 1001 once that child has ended
    /// on the SIGTERM the scenario sends it.
    #[tokio::test]
    async fn drain_counts_close_frames_after_sigterm() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;

        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = stopped_tx.send(true);
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                    let close = CloseFrame {
                        code: CloseCode::Away,
                        reason: "".into(),
                    };
                    ws.close(Some(close)).await.unwrap();
                    // The client's close reply ends the stream; dropping `ws` closes the socket.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });

        let upgrader = Upgrader::new(Target::parse(&format!("ws://{addr}/ws")).unwrap());
        let params = DrainParams {
            sessions: 20,
            concurrency: 8,
            grace: Duration::from_secs(2),
        };
        let m = drain(&upgrader, &Watched::new(vec![pid]), &params)
            .await
            .unwrap();
        for (name, value) in [
            ("opened", 20.0),
            ("drained", 20.0),
            ("close_1001", 20.0),
            ("drained_within_grace", 20.0),
            ("tcp_closed", 20.0),
            ("no_close", 0.0),
            ("exited", 1.0),
            ("errors", 0.0),
        ] {
            assert_eq!(m[name], value, "{name}: {m:?}");
        }
        assert!(m["drain_seconds"] < 2.0, "{m:?}");
        assert!(m["exit_seconds"] < 2.0, "{m:?}");

        // The child is gone now: a second drain refuses to start.
        assert!(drain(&upgrader, &Watched::new(vec![pid]), &params)
            .await
            .is_err());
    }

    /// The idle HTTP scenario end to end against a listener in this process (which also is
    /// the watched "proxy"): every connection is accepted and held, so every one counts as
    /// accepted and alive; against a server that closes what it accepts, every connection is
    /// still open or reported as closed.
    #[tokio::test]
    async fn idle_http_counts_held_connections() {
        async fn serve(close: bool) -> Target {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    if !close {
                        // Held until the client closes it, as a proxy waiting for a request.
                        tokio::spawn(async move {
                            let mut buf = [0u8; 64];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        });
                    }
                }
            });
            Target::parse(&format!("http://{addr}/")).unwrap()
        }
        let me = Watched::new(vec![std::process::id()]);
        let params = IdleHttpParams {
            connections: 50,
            concurrency: 8,
            accept_wait: Duration::from_secs(1),
        };
        let m = idle_http(&serve(false).await, &me, &params).await.unwrap();
        for (name, value) in [("opened", 50.0), ("alive", 50.0), ("errors", 0.0)] {
            assert_eq!(m[name], value, "{name}: {m:?}");
        }
        // This process holds both ends of each connection.
        assert!(m["accepted"] >= 50.0, "{m:?}");
        assert!(m.contains_key("kib_per_conn"), "{m:?}");

        // Whether the server has closed a connection yet when it is probed depends on
        // scheduling (the clients' own descriptors already satisfy the accept wait here), but
        // each one is either still open or reported.
        let m = idle_http(&serve(true).await, &me, &params).await.unwrap();
        assert_eq!(m["opened"], 50.0, "{m:?}");
        assert_eq!(m["alive"] + m["errors"], 50.0, "{m:?}");
    }

    #[test]
    fn reads_wrk_output() {
        let text = "Running 3s test @ http://127.0.0.1:18181/\n  1 threads and 64 connections\n  \
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.23ms  \
                    200.00us   5.00ms   90.00%\n  123456 requests in 3.00s, 12.34MB read\n  \
                    Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx \
                    responses: 4\nRequests/sec:  41152.00\nTransfer/sec:      4.11MB\n";
        assert_eq!(
            parse_wrk(text),
            Some(WrkSummary {
                requests: 123_456,
                requests_per_sec: 41_152.0,
                errors: 7
            })
        );
        assert_eq!(parse_wrk("nonsense"), None);
    }
}
