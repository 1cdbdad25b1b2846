//! The loopback link emulator (`chatxfer_tools::linkemu`) against small in-test
//! echo and sink servers on 127.0.0.1: delay, rate, bulk throughput, cuts
//! (fixed, seeded random, `cut_all`), half-close, backpressure, shutdown.
//!
//! Timing assertions are lower bounds or ratios, never tight absolute times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatxfer_tools::linkemu::{parse_duration, parse_rate, LinkConfig, LinkEmulator, RandomCut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Echoes every connection back until EOF, then closes its write side.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Reads every connection to EOF or error, acknowledges nothing, and
/// reports `(bytes received, time of the last byte)` per connection, in
/// accept order.
async fn sink_server() -> (SocketAddr, mpsc::UnboundedReceiver<(u64, Instant)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                let mut last = Instant::now();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    last = Instant::now();
                }
                let _ = tx.send((total, last));
            });
        }
    });
    (addr, rx)
}

async fn emulator(upstream: SocketAddr, config: LinkConfig) -> LinkEmulator {
    LinkEmulator::start("127.0.0.1:0", upstream, config)
        .await
        .unwrap()
}

/// Sends `len` bytes through `emu` to the sink and returns the achieved
/// rate in bit/s, from the first write to the sink's last byte.
async fn bulk_rate(
    emu: &LinkEmulator,
    sink: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    len: usize,
) -> f64 {
    let data = vec![0x5au8; len];
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    let start = Instant::now();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let (got, last) = tokio::time::timeout(Duration::from_secs(10), sink.recv())
        .await
        .expect("sink finished")
        .unwrap();
    assert_eq!(got, len as u64);
    got as f64 * 8.0 / last.duration_since(start).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_adds_to_round_trip() {
    let echo = echo_server().await;
    let cfg = LinkConfig {
        one_way_delay: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let emu = emulator(echo, cfg).await;
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for i in 0..5u8 {
        let start = Instant::now();
        s.write_all(&[i; 4]).await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        rtts.push(start.elapsed());
        assert_eq!(back, [i; 4]);
    }
    eprintln!("linkemu delay: 2x20 ms one-way, measured RTTs {rtts:?}");
    for rtt in &rtts {
        assert!(*rtt >= Duration::from_millis(40), "rtt {rtt:?} < 40 ms");
        assert!(*rtt < Duration::from_secs(2), "rtt {rtt:?}");
    }
    // The emulator counts a piece right after writing it, which may be just
    // after the client read it.
    let deadline = Instant::now() + Duration::from_secs(1);
    while emu.stats().bytes_down < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stats = emu.stats();
    assert_eq!(
        (stats.bytes_up, stats.bytes_down, stats.connections),
        (20, 20, 1)
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_cap_is_met() {
    let (sink, mut done) = sink_server().await;
    let cfg = LinkConfig {
        one_way_delay: Duration::from_millis(5),
        rate_bits_per_sec: Some(100_000_000),
        ..LinkConfig::default()
    };
    let emu = emulator(sink, cfg).await;
    let rate = bulk_rate(&emu, &mut done, 8 << 20).await;
    let ratio = rate / 100e6;
    eprintln!(
        "linkemu rate: 8 MiB at 100 Mbit/s, 5 ms: {:.1} Mbit/s ({:.1} %)",
        rate / 1e6,
        ratio * 100.0
    );
    assert!((0.70..=1.10).contains(&ratio), "ratio {ratio}");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_throughput_fills_long_fat_link() {
    let (sink, mut done) = sink_server().await;
    let cfg = LinkConfig::parse_rtt_rate("40ms", "200mbit").unwrap();
    assert_eq!(cfg.one_way_delay, Duration::from_millis(20));
    let emu = emulator(sink, cfg).await;
    let rate = bulk_rate(&emu, &mut done, 16 << 20).await;
    let ratio = rate / 200e6;
    eprintln!(
        "linkemu throughput: 16 MiB at 200 Mbit/s, 20 ms one-way: {:.1} Mbit/s ({:.1} %)",
        rate / 1e6,
        ratio * 100.0
    );
    assert!(ratio >= 0.85, "ratio {ratio}");
    assert!(ratio <= 1.10, "faster than the link: ratio {ratio}");
    emu.shutdown().await;
}

/// Pushes `len` bytes through the emulator; returns what the sink received
/// and whether the client saw the connection end (error or EOF).
async fn push_until_cut(
    emu: &LinkEmulator,
    sink: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    len: usize,
) -> u64 {
    let s = TcpStream::connect(emu.local_addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let data = vec![7u8; len];
        // Fails with EPIPE/ECONNRESET once the emulator cuts.
        let _ = w.write_all(&data).await;
        w
    });
    let (got, _) = tokio::time::timeout(Duration::from_secs(5), sink.recv())
        .await
        .expect("server side ended")
        .unwrap();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf))
        .await
        .expect("client side ended");
    assert!(matches!(end, Ok(0) | Err(_)), "client read {end:?}");
    let _ = writer.await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_bytes_is_exact() {
    let (sink, mut done) = sink_server().await;
    let n = 100_003u64;
    let cfg = LinkConfig {
        one_way_delay: Duration::from_millis(2),
        rate_bits_per_sec: Some(1_000_000_000),
        cut_after_bytes: Some(n),
        ..LinkConfig::default()
    };
    let emu = emulator(sink, cfg).await;
    let got = push_until_cut(&emu, &mut done, 1 << 20).await;
    let stats = emu.stats();
    eprintln!("linkemu cut_after_bytes {n}: server got {got}, stats {stats:?}");
    assert_eq!(got, n);
    assert_eq!(stats.cuts, 1);
    assert_eq!(stats.bytes_up, n);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cut_is_deterministic_per_seed() {
    let (sink, mut done) = sink_server().await;
    let cut = |seed| LinkConfig {
        random_cut: Some(RandomCut {
            seed,
            min_bytes: 1_000,
            max_bytes: 200_000,
        }),
        ..LinkConfig::default()
    };
    let mut runs = Vec::new();
    for seed in [42, 42, 43] {
        let emu = emulator(sink, cut(seed)).await;
        let mut points = Vec::new();
        for _ in 0..4 {
            points.push(push_until_cut(&emu, &mut done, 256 * 1024).await);
        }
        assert_eq!(emu.stats().cuts, 4);
        let expected: Vec<u64> = (0..4)
            .map(|i| cut(seed).random_cut.unwrap().cut_point(i))
            .collect();
        assert_eq!(points, expected);
        assert!(points.iter().all(|p| (1_000..=200_000).contains(p)));
        runs.push(points);
        emu.shutdown().await;
    }
    eprintln!(
        "linkemu random_cut: seed 42 {:?} / {:?}, seed 43 {:?}",
        runs[0], runs[1], runs[2]
    );
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_delivers_queued_data_first() {
    let echo = echo_server().await;
    let cfg = LinkConfig::parse_rtt_rate("10ms", "50mbit").unwrap();
    let emu = emulator(echo, cfg).await;
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (_, got) = tokio::join!(send, recv);
    got.unwrap();
    assert!(back == data, "echo mismatch: {} bytes back", back.len());
    let stats = emu.stats();
    assert_eq!(
        (stats.bytes_up, stats.bytes_down, stats.cuts),
        (300_000, 300_000, 0)
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_the_queue() {
    // A server that accepts but never reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let config = LinkConfig::default();
    let limit = config.queue_limit_bytes() as u64;
    let emu = emulator(addr, config).await;
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    // Write until a write stays blocked: everything written is in a socket
    // buffer or the emulator's queue, which must stay within its limit.
    let piece = vec![1u8; 256 * 1024];
    let mut written = 0u64;
    while written < 512 << 20 {
        match tokio::time::timeout(Duration::from_millis(300), s.write_all(&piece)).await {
            Ok(r) => {
                r.unwrap();
                written += piece.len() as u64;
            }
            Err(_) => break,
        }
    }
    let delivered = emu.stats().bytes_up;
    // Kernel socket buffers on both sides of the emulator hold some too;
    // 32 MiB is far above what loopback buffers take here.
    let slack = 32 << 20;
    println!(
        "linkemu backpressure: writer blocked after {written} bytes; queue limit {limit}; \
         {delivered} handed to the stalled server"
    );
    assert!(written < 512 << 20, "512 MiB vanished into a stalled link");
    assert!(
        written <= limit + delivered + slack,
        "{written} bytes accepted with a queue limit of {limit} and {delivered} delivered"
    );
    emu.shutdown().await;
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_all_and_shutdown() {
    let echo = echo_server().await;
    let emu = emulator(echo, LinkConfig::default()).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        conns.push(s);
    }
    assert_eq!(emu.stats().active, 3);
    emu.cut_all();
    for s in &mut conns {
        let mut buf = [0u8; 4];
        let end = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("cut connection ends");
        assert!(matches!(end, Ok(0) | Err(_)), "read {end:?}");
    }
    let stats = emu.stats();
    assert_eq!(stats.cuts, 3);

    // New connections after cut_all are not cut.
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    s.write_all(b"pong").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong");

    let addr = emu.local_addr();
    emu.shutdown().await;
    let mut buf = [0u8; 4];
    let end = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("shutdown closes live connections");
    assert!(matches!(end, Ok(0) | Err(_)), "read {end:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

#[test]
fn parses_rtt_and_rate() {
    let c = LinkConfig::parse_rtt_rate("40ms", "200mbit").unwrap();
    assert_eq!(c.one_way_delay, Duration::from_millis(20));
    assert_eq!(c.rate_bits_per_sec, Some(200_000_000));
    let c = LinkConfig::parse_rtt_rate("1s", "500kbit").unwrap();
    assert_eq!(c.one_way_delay, Duration::from_millis(500));
    assert_eq!(c.rate_bits_per_sec, Some(500_000));
    let c = LinkConfig::parse_rtt_rate("100ms", "1gbit").unwrap();
    assert_eq!(c.one_way_delay, Duration::from_millis(50));
    assert_eq!(c.rate_bits_per_sec, Some(1_000_000_000));
    assert_eq!(parse_rate("50Mbit").unwrap(), Some(50_000_000));
    assert_eq!(parse_rate("1.5gbit").unwrap(), Some(1_500_000_000));
    assert_eq!(parse_rate("none").unwrap(), None);
    assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    for bad in ["40", "ms", "-5ms", "fast"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    for bad in ["10mbps", "mbit", "0mbit", "-1mbit", "x"] {
        assert!(parse_rate(bad).is_err(), "{bad}");
    }
}

#[test]
fn queue_holds_several_bandwidth_delay_products() {
    let c = LinkConfig::parse_rtt_rate("40ms", "200mbit").unwrap();
    // BDP = 200 Mbit/s × 40 ms = 1 MB; 4 × BDP is below the 4 MiB floor.
    assert_eq!(c.queue_limit_bytes(), 4 << 20);
    let c = LinkConfig::parse_rtt_rate("200ms", "1gbit").unwrap();
    assert_eq!(c.queue_limit_bytes(), 100_000_000);
}
