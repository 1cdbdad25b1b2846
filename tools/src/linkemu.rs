//! A loopback TCP link emulator: a proxy that adds latency, a bandwidth cap
//! and connection cuts between a client and an upstream server.
//!
//! The kernel on our test machines has no `netem`, so tests, the
//! `chatxfer demo` command and the benchmarks put this proxy between the
//! client and the server instead. It is a test and tooling aid, not part of
//! any C API.
//!
//! # What it emulates
//!
//! Every connection accepted on the emulator's listening address opens its
//! own connection to `upstream` and pumps both directions independently:
//!
//! * **Delay**: each direction adds [`LinkConfig::one_way_delay`], so a round
//!   trip through the emulator takes at least twice that.
//! * **Bandwidth**: [`LinkConfig::rate_bits_per_sec`] caps each direction
//!   separately (a full-duplex link).
//! * **Cuts**: [`LinkConfig::cut_after_bytes`] or [`LinkConfig::random_cut`]
//!   cut a connection once exactly that many client→server bytes have been
//!   forwarded: the client is reset at once (`SO_LINGER` 0, so it sees
//!   `ECONNRESET`); the server gets exactly those bytes, then EOF (a RST
//!   right away could discard the tail still in the emulator's kernel send
//!   buffer), and is reset once it closes or after 500 ms, whatever it sends
//!   meanwhile being discarded. [`LinkEmulator::cut_all`] resets both sides of
//!   every live connection at once.
//! * **Half-close**: when one side shuts down its write half, the other side
//!   gets `shutdown(Write)` once everything queued before it was delivered.
//! * **Resets** from either side (or any IO error) reset the other side.
//!
//! # How pacing works
//!
//! A direction is a reader and a writer joined by a queue. The reader stamps
//! each piece it reads with its arrival time. The writer models a
//! store-and-forward link: a piece of `n` bytes starts transmission at
//! `max(arrival, end of the previous piece)`, occupies the link for
//! `n * 8 / rate` seconds (computed in nanoseconds with the remainder carried
//! over, so pacing is byte-accurate over any run), and is written to the
//! destination `one_way_delay` after its transmission ends. The writer
//! sleeps (`tokio::time::sleep_until`) only for the first piece that is not
//! yet due; every piece already due is written straight away, so there is at
//! most one timer per direction and no timer storm.
//!
//! Pieces are small enough to pace smoothly: at most 64 KiB, and at most
//! about 2 ms of link time (but never less than 1500 bytes).
//!
//! The queue holds at least the bandwidth-delay product: its limit is
//! `max(4 × rate × RTT, 4 MiB)` bytes per direction (capped at 256 MiB; with
//! no rate cap 1 Gbit/s is assumed for the sizing). Beyond that the reader
//! stops reading its socket, so TCP flow control pushes back on the sender
//! and memory stays bounded.
//!
//! # Limits
//!
//! * Tokio's timer has a 1 ms granularity and rounds up: delays are lower
//!   bounds and are typically up to ~1 ms longer than configured; sub-ms
//!   delays are approximate.
//! * Each leg is a separate loopback TCP connection, so the endpoints' TCP
//!   stacks do not see the emulated RTT (acks are local). The emulator
//!   reproduces the timing of data delivery, not TCP congestion control.
//! * No packet loss, reordering or jitter is emulated.
//! * `cut_all`, shutdown and resets discard what is still in the
//!   emulator's own kernel send buffers, as a real link failure loses
//!   in-flight data. `stats().bytes_up`/`bytes_down` count bytes handed to
//!   the destination socket.
//! * Configuration changes ([`LinkEmulator::set_config`]) apply to new
//!   connections only. A connection the kernel has accepted but the emulator
//!   has not yet picked up when [`LinkEmulator::cut_all`] runs is not cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Largest piece read from a socket in one go.
const MAX_PIECE: usize = 64 * 1024;
/// Smallest piece size used for pacing at low rates.
const MIN_PIECE: usize = 1500;
/// Target link time of one piece, for smooth pacing.
const PIECE_TIME: Duration = Duration::from_millis(2);
/// Bookkeeping charged per queued piece on top of its payload, so a flood of
/// tiny pieces cannot grow the queue without bound.
const PIECE_OVERHEAD: usize = 64;
/// Lower bound of the per-direction queue limit.
const MIN_QUEUE: usize = 4 * 1024 * 1024;
/// Upper bound of the per-direction queue limit.
const MAX_QUEUE: usize = 256 * 1024 * 1024;
/// How long the upstream side of a byte-count cut waits for the server to
/// close after the FIN before it is reset anyway.
const CUT_GRACE: Duration = Duration::from_millis(500);
/// Rate assumed for queue sizing when the link has no rate cap.
const UNCAPPED_SIZING_RATE: u64 = 1_000_000_000;

/// How the emulated link behaves. Read once per connection, when the
/// emulator accepts it.
#[derive(Clone, Debug, Default)]
pub struct LinkConfig {
    /// Added to each direction (so the round-trip time grows by twice this).
    pub one_way_delay: Duration,
    /// Bandwidth cap in bits per second, applied to each direction
    /// independently. `None` (or `Some(0)`) means uncapped.
    pub rate_bits_per_sec: Option<u64>,
    /// Cut each proxied connection after exactly this many client→server
    /// bytes were forwarded.
    pub cut_after_bytes: Option<u64>,
    /// Cut each proxied connection at a client→server byte count drawn per
    /// connection from a seed. If `cut_after_bytes` is set too, the earlier
    /// of the two applies.
    pub random_cut: Option<RandomCut>,
}

/// A deterministic, per-connection random cut point: connection `i` (the
/// `i`-th connection accepted by an emulator, counting from 0) is cut after
/// [`RandomCut::cut_point`]`(i)` client→server bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomCut {
    pub seed: u64,
    /// Smallest cut point (inclusive).
    pub min_bytes: u64,
    /// Largest cut point (inclusive).
    pub max_bytes: u64,
}

impl RandomCut {
    /// The cut point of connection `conn_index`, in `[min_bytes, max_bytes]`;
    /// a pure function of `(seed, conn_index)`.
    pub fn cut_point(&self, conn_index: u64) -> u64 {
        let lo = self.min_bytes.min(self.max_bytes);
        let hi = self.min_bytes.max(self.max_bytes);
        let draw = splitmix64(self.seed ^ splitmix64(conn_index));
        match (hi - lo).checked_add(1) {
            Some(span) => lo + draw % span,
            None => draw, // the whole u64 range
        }
    }
}

/// SplitMix64 finaliser: a tiny, well-mixed deterministic hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LinkConfig {
    /// A configuration from a round-trip time and a rate, in the notation of
    /// `tc`: `"40ms"`, `"100ms"`, `"1s"`, `"500us"`; `"200mbit"`, `"50mbit"`,
    /// `"1gbit"`, `"500kbit"` (decimal prefixes, bits per second; `"none"` or
    /// `"unlimited"` for no cap). The one-way delay is half the RTT.
    pub fn parse_rtt_rate(rtt: &str, rate: &str) -> Result<LinkConfig, String> {
        let rtt = parse_duration(rtt)?;
        let rate = parse_rate(rate)?;
        Ok(LinkConfig {
            one_way_delay: rtt / 2,
            rate_bits_per_sec: rate,
            ..LinkConfig::default()
        })
    }

    /// The effective rate cap (a zero rate means uncapped).
    fn rate(&self) -> Option<u64> {
        self.rate_bits_per_sec.filter(|&r| r > 0)
    }

    /// Bytes one direction of a connection may queue before the emulator
    /// stops reading from the source socket: `max(4 × BDP, 4 MiB)`, where
    /// BDP is rate × RTT, capped at 256 MiB.
    pub fn queue_limit_bytes(&self) -> usize {
        let rate = self.rate().unwrap_or(UNCAPPED_SIZING_RATE) as u128;
        let rtt_ns = self.one_way_delay.as_nanos().saturating_mul(2);
        let bdp = rate.saturating_mul(rtt_ns) / 8 / 1_000_000_000;
        let limit = bdp
            .saturating_mul(4)
            .clamp(MIN_QUEUE as u128, MAX_QUEUE as u128);
        limit as usize
    }

    /// Largest piece read from a socket at once: about 2 ms of link time,
    /// between 1500 bytes and 64 KiB.
    fn piece_size(&self) -> usize {
        match self.rate() {
            None => MAX_PIECE,
            Some(rate) => {
                let bytes = rate as u128 * PIECE_TIME.as_nanos() / 8 / 1_000_000_000;
                bytes.clamp(MIN_PIECE as u128, MAX_PIECE as u128) as usize
            }
        }
    }

    /// The client→server byte count after which connection `conn_index` is
    /// cut, if any.
    pub fn cut_point(&self, conn_index: u64) -> Option<u64> {
        let random = self.random_cut.as_ref().map(|r| r.cut_point(conn_index));
        match (self.cut_after_bytes, random) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parses `"40ms"`, `"1s"`, `"1.5s"`, `"500us"` (also `"0"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit_ns) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("µs") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e9)
    } else {
        return Err(format!(
            "bad duration {s:?}: expected e.g. \"40ms\", \"1s\", \"500us\""
        ));
    };
    let value = parse_number(num).ok_or_else(|| format!("bad duration {s:?}"))?;
    let ns = value * unit_ns;
    if ns > u64::MAX as f64 {
        return Err(format!("duration {s:?} too large"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Parses a rate in bits per second: `"200mbit"`, `"1gbit"`, `"500kbit"`,
/// `"9600bit"` or a bare number of bits per second; `"none"`, `"unlimited"`
/// or `"off"` for no cap.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "none" | "unlimited" | "off") {
        return Ok(None);
    }
    if t.ends_with("bps") {
        return Err(format!(
            "ambiguous rate {s:?}: use \"kbit\", \"mbit\" or \"gbit\" (bits per second)"
        ));
    }
    let (num, mult) = if let Some(n) = t.strip_suffix("kbit") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = t.strip_suffix("bit") {
        (n, 1.0)
    } else {
        (t.as_str(), 1.0)
    };
    let value = parse_number(num)
        .ok_or_else(|| format!("bad rate {s:?}: expected e.g. \"200mbit\", \"500kbit\""))?;
    let bits = (value * mult).round();
    if bits < 1.0 || bits > u64::MAX as f64 {
        return Err(format!("rate {s:?} out of range"));
    }
    Ok(Some(bits as u64))
}

fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Counters of an emulator, over all its connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Client→server bytes delivered (written to the upstream socket).
    pub bytes_up: u64,
    /// Server→client bytes delivered (written to the client socket).
    pub bytes_down: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections cut by the emulator (byte-count cuts and `cut_all`; not
    /// the closing of connections by `shutdown`).
    pub cuts: u64,
    /// Connections currently open.
    pub active: u64,
}

#[derive(Default)]
struct Counters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    active: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<LinkConfig>,
    counters: Counters,
    /// Bumped by `cut_all`; every connection watches it.
    cut_gen: watch::Sender<u64>,
    /// Set once on shutdown (or drop).
    shutdown: watch::Sender<bool>,
}

/// A running link emulator: a TCP listener on loopback whose connections are
/// proxied to an upstream address through an emulated link. See the
/// [module documentation](self).
///
/// Dropping it stops it too (without waiting); [`LinkEmulator::shutdown`]
/// also waits until no task of it is left.
pub struct LinkEmulator {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl LinkEmulator {
    /// Binds `listen` (e.g. `"127.0.0.1:0"`) and starts proxying to
    /// `upstream`, spawning on the current tokio runtime.
    pub async fn start(
        listen: &str,
        upstream: SocketAddr,
        config: LinkConfig,
    ) -> std::io::Result<LinkEmulator> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(config),
            counters: Counters::default(),
            cut_gen: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(%local_addr, %upstream, "link emulator started");
        Ok(LinkEmulator {
            local_addr,
            shared,
            task: Some(task),
        })
    }

    /// The address clients should connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
            cuts: c.cuts.load(Ordering::SeqCst),
            active: c.active.load(Ordering::SeqCst),
        }
    }

    /// The configuration new connections get.
    pub fn config(&self) -> LinkConfig {
        lock(&self.shared.config).clone()
    }

    /// Replaces the configuration; applies to connections accepted from now
    /// on (live connections keep theirs).
    pub fn set_config(&self, config: LinkConfig) {
        *lock(&self.shared.config) = config;
    }

    /// Abruptly closes (resets) both sides of every current connection.
    pub fn cut_all(&self) {
        self.shared.cut_gen.send_modify(|g| *g += 1);
    }

    /// Stops accepting, resets every connection and waits until no task of
    /// the emulator is left running.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

use chatxfer::sync::lock;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut conns = JoinSet::new();
    if !*shutdown.borrow_and_update() {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        let index = shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                        let config = lock(&shared.config).clone();
                        let conn = Conn {
                            shared: shared.clone(),
                            cut_gen: shared.cut_gen.subscribe(),
                            shutdown: shared.shutdown.subscribe(),
                            index,
                            peer,
                            config,
                        };
                        conns.spawn(conn.run(client));
                    }
                    Err(e) => {
                        // E.g. EMFILE: back off instead of spinning.
                        tracing::debug!(error = %e, "link emulator accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
    }
    drop(listener);
    // Every connection watches the shutdown flag and resets itself.
    while conns.join_next().await.is_some() {}
    tracing::debug!("link emulator stopped");
}

/// Why a connection's pumps stopped early.
enum Stop {
    /// The configured byte-count cut was reached.
    Cut,
    Io(std::io::Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

enum Outcome {
    Done,
    Stopped(Stop),
    CutAll,
    Shutdown,
}

struct Conn {
    shared: Arc<Shared>,
    cut_gen: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    index: u64,
    peer: SocketAddr,
    config: LinkConfig,
}

impl Conn {
    async fn run(mut self, mut client: TcpStream) {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        counters.active.fetch_add(1, Ordering::SeqCst);
        let (index, peer) = (self.index, self.peer);
        tracing::debug!(conn = index, %peer, "link emulator: accepted");
        let upstream = self.shared.upstream;
        let connected = tokio::select! {
            r = TcpStream::connect(upstream) => Some(r),
            _ = signalled(&mut self.cut_gen, &mut self.shutdown) => None,
        };
        match connected {
            Some(Ok(mut server)) => {
                let outcome = self.pump(&mut client, &mut server).await;
                let abort = match outcome {
                    Outcome::Done => {
                        tracing::debug!(conn = index, "link emulator: closed");
                        false
                    }
                    Outcome::Stopped(Stop::Cut) => {
                        tracing::debug!(conn = index, "link emulator: cut after byte count");
                        counters.cuts.fetch_add(1, Ordering::SeqCst);
                        reset(client);
                        self.finish_cut(server).await;
                        counters.active.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    Outcome::CutAll => {
                        tracing::debug!(conn = index, "link emulator: cut (cut_all)");
                        counters.cuts.fetch_add(1, Ordering::SeqCst);
                        true
                    }
                    Outcome::Stopped(Stop::Io(e)) => {
                        tracing::debug!(conn = index, error = %e, "link emulator: IO error, resetting");
                        true
                    }
                    Outcome::Shutdown => true,
                };
                if abort {
                    reset(server);
                    reset(client);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(conn = index, error = %e, "link emulator: upstream connect failed");
                reset(client);
            }
            None => reset(client),
        }
        counters.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Ends the upstream side of a byte-count cut. Its last piece may still
    /// sit in our kernel send buffer (the receiver's window was full), and a
    /// RST now would discard it, so the server would get fewer than the
    /// promised bytes. Instead send a FIN behind the data, discard whatever
    /// the server still sends, and reset once the server has closed (so it
    /// read everything), or after [`CUT_GRACE`], or on `cut_all`/shutdown.
    async fn finish_cut(&mut self, mut server: TcpStream) {
        let _ = server.shutdown().await;
        let deadline = Instant::now() + CUT_GRACE;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = server.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(conn = self.index, "link emulator: server did not close after cut");
                    break;
                }
                _ = signalled(&mut self.cut_gen, &mut self.shutdown) => break,
            }
        }
        reset(server);
    }

    async fn pump(&mut self, client: &mut TcpStream, server: &mut TcpStream) -> Outcome {
        for s in [&*client, &*server] {
            let _ = s.set_nodelay(true);
        }
        let counters = &self.shared.counters;
        let cfg = &self.config;
        let cut_at = cfg.cut_point(self.index);
        let (client_rd, client_wr) = client.split();
        let (server_rd, server_wr) = server.split();
        let pumps = async {
            if cut_at == Some(0) {
                return Err(Stop::Cut);
            }
            let up = direction(client_rd, server_wr, cfg, cut_at, &counters.bytes_up);
            let down = direction(server_rd, client_wr, cfg, None, &counters.bytes_down);
            tokio::try_join!(up, down).map(|_| ())
        };
        tokio::select! {
            r = pumps => match r {
                Ok(()) => Outcome::Done,
                Err(stop) => Outcome::Stopped(stop),
            },
            shut = signalled(&mut self.cut_gen, &mut self.shutdown) => {
                if shut { Outcome::Shutdown } else { Outcome::CutAll }
            }
        }
    }
}

/// Resolves when `cut_all` (false) or shutdown (true) is signalled.
async fn signalled(
    cut_gen: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow_and_update() {
        return true;
    }
    tokio::select! {
        r = cut_gen.changed() => r.is_err(),
        _ = shutdown.changed() => true,
    }
}

/// Closes a socket abruptly: with a zero linger the kernel sends a RST.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One queued piece of one direction.
struct Piece {
    arrival: Instant,
    data: Vec<u8>,
    /// Queue permits this piece holds.
    charge: usize,
    /// Cut the connection once this piece is delivered.
    cut_after: bool,
}

/// Pumps one direction: `src` → emulated link → `dst`.
async fn direction<R, W>(
    src: R,
    dst: W,
    cfg: &LinkConfig,
    cut_at: Option<u64>,
    delivered: &AtomicU64,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let queue = Semaphore::new(cfg.queue_limit_bytes());
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Link {
        delay: cfg.one_way_delay,
        rate: cfg.rate(),
        free_at: None,
        remainder: 0,
    };
    tokio::try_join!(
        read_side(src, tx, &queue, cfg.piece_size(), cut_at),
        write_side(dst, rx, &queue, link, delivered),
    )
    .map(|_| ())
}

async fn read_side<R: AsyncRead + Unpin>(
    mut src: R,
    tx: mpsc::UnboundedSender<Piece>,
    queue: &Semaphore,
    piece_size: usize,
    cut_at: Option<u64>,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; piece_size];
    let mut total: u64 = 0;
    loop {
        // Reserve room for a whole piece before reading, so the queue never
        // exceeds its limit; give back what the read did not use.
        let Ok(permit) = queue.acquire_many(piece_size as u32).await else {
            return Ok(());
        };
        permit.forget();
        let want = match cut_at {
            Some(limit) => piece_size.min((limit - total).try_into().unwrap_or(usize::MAX)),
            None => piece_size,
        };
        let n = match src.read(&mut buf[..want]).await {
            Ok(n) => n,
            Err(e) => {
                queue.add_permits(piece_size);
                return Err(e.into());
            }
        };
        if n == 0 {
            // Clean EOF: dropping `tx` tells the writer to shut down its side
            // once the queue is delivered.
            queue.add_permits(piece_size);
            return Ok(());
        }
        let charge = (n + PIECE_OVERHEAD).min(piece_size);
        queue.add_permits(piece_size - charge);
        total += n as u64;
        let cut_after = cut_at == Some(total);
        let piece = Piece {
            arrival: Instant::now(),
            data: buf[..n].to_vec(),
            charge,
            cut_after,
        };
        if tx.send(piece).is_err() || cut_after {
            // The writer is gone (it failed), or nothing more may cross.
            return Ok(());
        }
    }
}

/// The timing model of one direction of the link.
struct Link {
    delay: Duration,
    rate: Option<u64>,
    /// When the link finishes transmitting what was scheduled so far.
    free_at: Option<Instant>,
    /// Sub-nanosecond remainder of the transmission time, in units of
    /// 1/rate ns, carried over to keep pacing byte-accurate.
    remainder: u128,
}

impl Link {
    /// When a piece of `len` bytes that arrived at `arrival` is delivered.
    fn schedule(&mut self, arrival: Instant, len: usize) -> Instant {
        let sent = match self.rate {
            None => arrival,
            Some(rate) => {
                let start = match self.free_at {
                    Some(free) if free > arrival => free,
                    _ => arrival,
                };
                let scaled = len as u128 * 8 * 1_000_000_000 + self.remainder;
                let rate = rate as u128;
                self.remainder = scaled % rate;
                let tx_ns = (scaled / rate).min(u64::MAX as u128) as u64;
                let end = start + Duration::from_nanos(tx_ns);
                self.free_at = Some(end);
                end
            }
        };
        sent + self.delay
    }
}

async fn write_side<W: AsyncWrite + Unpin>(
    mut dst: W,
    mut rx: mpsc::UnboundedReceiver<Piece>,
    queue: &Semaphore,
    mut link: Link,
    delivered: &AtomicU64,
) -> Result<(), Stop> {
    while let Some(piece) = rx.recv().await {
        let due = link.schedule(piece.arrival, piece.data.len());
        // Pieces already due go out back to back, without a timer.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        dst.write_all(&piece.data).await?;
        delivered.fetch_add(piece.data.len() as u64, Ordering::SeqCst);
        queue.add_permits(piece.charge);
        if piece.cut_after {
            return Err(Stop::Cut);
        }
    }
    // The source sent EOF and everything before it is delivered.
    dst.shutdown().await?;
    Ok(())
}
