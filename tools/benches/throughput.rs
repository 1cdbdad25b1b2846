//! End-to-end throughput, CPU and memory of uploads (issue 7).
//!
//! ```sh
//! cargo bench --bench throughput                 # every scenario
//! cargo bench --bench throughput -- wan40 memory # some of them
//! cargo bench --bench throughput -- deployed-model # the deployed server's timing (issue 16)
//! cargo bench --bench throughput -- rate_cap       # the upload rate cap against its target (issue 14)
//! CHATXFER_BENCH_SCALE=0.05 CHATXFER_BENCH_RUNS=1 cargo bench --bench throughput
//! ```
//!
//! Prints a Markdown table and writes the same rows as JSON to
//! `<target dir>/bench/throughput.json` (`$CARGO_TARGET_DIR` if set).
//!
//! Processes: the client under test runs in this process (the library's
//! runtime, the real [`Client`]); every peer runs in a child process started
//! by re-executing this binary with `--child ...`, so that the CPU time
//! measured here (getrusage of this process) is the client's alone:
//! * `--child serve`: the reference server (`chatxfer_tools::server::start`, two
//!   tokio workers like `chatxfer serve`), optionally behind the link emulator;
//! * `--child sink`: a peer that parses just enough of each chunk (name and
//!   seq from the JSON head) to acknowledge it at once, and discards the data;
//! * `--child deployed`: a fake with the deployed server's timing (one
//!   worker per connection, Nagle on; see [`DeployedTiming`]) for the
//!   `deployed-model` rows, where the windows take turns run after run;
//! * `--child upload`: one upload by a fresh client, for the memory scenario
//!   (its VmHWM and rusage are those of the client alone).
//!
//! Children exit when their standard input closes, so they never outlive
//! the benchmark.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatxfer::engine::{
    md5_hex, Engine, EngineConfig, Event, FileSpec, ServerStorage, WindowPolicy,
};
use chatxfer::protocol::messages::UploadRsp;
use chatxfer::protocol::{frame, FrameDecoder, MsgId, MAX_BODY_LEN};
use chatxfer::runtime::files::FileSource;
use chatxfer::runtime::{Client, ClientConfig, ClientEvent};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// uid of every upload (the server stores under `<dir>/<uid>/`).
const UID: i64 = 1;
/// The window of the "limit" rows: the default, as in the loopback row it is
/// compared with. (Against the instant-ack peer it settles at a few chunks;
/// fixed:64 measured 15-30 % slower here, probably because more data in
/// flight falls out of the CPU caches.)
fn limit_window() -> WindowPolicy {
    WindowPolicy::adaptive()
}

// ------------------------------------------------------------------ options

struct Opts {
    runs: usize,
    scale: f64,
    only: Vec<String>,
}

impl Opts {
    fn from_env(args: &[String]) -> Opts {
        let runs = std::env::var("CHATXFER_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n >= 1)
            .unwrap_or(3);
        let scale = std::env::var("CHATXFER_BENCH_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&s: &f64| s > 0.0 && s.is_finite())
            .unwrap_or(1.0);
        let only = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        Opts { runs, scale, only }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == scenario)
    }

    /// `bytes` scaled, rounded to whole KiB, at least one chunk.
    fn bytes(&self, bytes: u64) -> u64 {
        (((bytes as f64 * self.scale) as u64) / 1024 * 1024).max(32 * 1024)
    }
}

// ------------------------------------------------------------------ measurements

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of another process, from /proc/<pid>/stat (clock ticks).
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / hz
}

/// A `Vm...` line of /proc/self/status, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One timed transfer.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    secs: f64,
    file_bytes: u64,
    wire_bytes: u64,
    cpu_s: f64,
    /// CPU time of the peer's process during the run (server, emulator, sink).
    peer_cpu_s: f64,
    hwm_kib: u64,
    base_rss_kib: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    window: String,
    files: usize,
    bytes: u64,
    runs: Vec<Run>,
    note: String,
    peak_rss: bool,
    link_mb_s: Option<f64>,
}

impl Row {
    fn mb_s(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.file_bytes as f64 / r.secs / 1e6)
                .collect(),
        )
    }
    fn min_mb_s(&self) -> f64 {
        self.runs
            .iter()
            .map(|r| r.file_bytes as f64 / r.secs / 1e6)
            .fold(f64::INFINITY, f64::min)
    }
    fn wire_mb_s(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.wire_bytes as f64 / r.secs / 1e6)
                .collect(),
        )
    }
    fn cpu_s_per_gib(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.cpu_s / (r.file_bytes as f64 / GIB))
                .collect(),
        )
    }
    fn peer_cpu_s_per_gib(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.peer_cpu_s / (r.file_bytes as f64 / GIB))
                .collect(),
        )
    }
    fn peak_rss_mib(&self) -> Option<f64> {
        self.peak_rss
            .then(|| self.runs.iter().map(|r| r.hwm_kib).max().unwrap_or(0) as f64 / 1024.0)
    }
    fn base_rss_mib(&self) -> Option<f64> {
        self.peak_rss
            .then(|| self.runs.iter().map(|r| r.base_rss_kib).max().unwrap_or(0) as f64 / 1024.0)
    }
}

// ------------------------------------------------------------------ children

/// A peer in a child process (this binary with `--child ...`).
struct Peer {
    child: std::process::Child,
    addr: String,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("--child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("child address");
        let addr = line.trim().to_string();
        assert!(!addr.is_empty(), "child {args:?} printed no address");
        Peer { child, addr }
    }
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the child exits on EOF
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference server (and link emulator) in a child, storing into `dir`.
fn start_server(dir: &Path, link: Option<(&str, &str)>) -> Peer {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["serve", "--dir", dir];
    if let Some((rtt, rate)) = link {
        args.extend(["--rtt", rtt, "--rate", rate]);
    }
    Peer::start(&args)
}

fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn child_main(args: &[String]) {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("serve") => child_serve(
            PathBuf::from(arg("--dir").expect("--dir")),
            arg("--rtt").zip(arg("--rate")),
        ),
        Some("sink") => child_sink(),
        Some("deployed") => child_deployed(
            PathBuf::from(arg("--dir").expect("--dir")),
            DeployedTiming::from_args(&arg),
        ),
        Some("upload") => child_upload(
            &arg("--server").expect("--server"),
            Path::new(&arg("--file").expect("--file")),
            &arg("--md5").expect("--md5"),
            WindowPolicy::parse(&arg("--window").expect("--window")).expect("window"),
        ),
        other => panic!("unknown child mode {other:?}"),
    }
}

fn child_serve(dir: PathBuf, link: Option<(String, String)>) {
    // Two workers, like `chatxfer serve` (the library runtime).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (server, emu) = rt.block_on(async {
        let server = chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(dir),
        )
        .await
        .expect("start server");
        let emu = match link {
            Some((rtt, rate)) => Some(
                chatxfer_tools::linkemu::LinkEmulator::start(
                    "127.0.0.1:0",
                    server.local_addr(),
                    chatxfer_tools::linkemu::LinkConfig::parse_rtt_rate(&rtt, &rate).expect("link"),
                )
                .await
                .expect("start link emulator"),
            ),
            None => None,
        };
        (server, emu)
    });
    let addr = emu.as_ref().map_or(server.local_addr(), |e| e.local_addr());
    println!("{addr}");
    std::io::stdout().flush().unwrap();
    wait_for_stdin_eof();
    rt.block_on(async {
        if let Some(e) = emu {
            e.shutdown().await;
        }
        server.shutdown().await;
    });
}

/// The `"name"` and `"seq"` of a chunk request, read from its JSON head
/// (the encoder writes them first and `data` last). Names here need no escapes.
fn name_and_seq(body: &[u8]) -> Option<(&str, u32)> {
    let head = &body[..body.len().min(512)];
    let find = |pat: &[u8]| head.windows(pat.len()).position(|w| w == pat);
    let n = find(b"\"name\":\"")? + 8;
    let n_end = n + head[n..].iter().position(|&b| b == b'"')?;
    let s = find(b"\"seq\":")? + 6;
    let seq = head[s..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u32, |acc, b| acc * 10 + (b - b'0') as u32);
    Some((std::str::from_utf8(&head[n..n_end]).ok()?, seq))
}

fn child_sink() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || sink_connection(stream));
        }
    });
    wait_for_stdin_eof();
}

/// Reads chunk requests, discards their data and acknowledges each at once
/// with the reply the reference server sends (all fields, JSON types per id).
fn sink_connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 1 << 20];
    let (mut start, mut end) = (0usize, 0usize);
    let mut replies = Vec::with_capacity(64 * 1024);
    loop {
        if end == buf.len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = match stream.read(&mut buf[end..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        end += n;
        replies.clear();
        while let Ok(Some((id, body, used))) = frame::split_frame(&buf[start..end], MAX_BODY_LEN) {
            if let Some((name, seq)) = name_and_seq(body) {
                let rsp =
                    UploadRsp::encode_success(id.reply(), name, seq, 0, "", UID, UID, 2, 0, 0);
                frame::encode(id.reply(), &rsp, &mut replies);
            }
            start += used;
        }
        if start == end {
            (start, end) = (0, 0);
        }
        if !replies.is_empty() && stream.write_all(&replies).is_err() {
            return;
        }
    }
}

/// The deployed ResourceServer's timing, for the `deployed-model` rows
/// (issue 16). That server (`CSession.cpp`, `LogicWorker.cpp`) reads a
/// connection's frames on one IO thread that posts each to the connection's
/// logic worker, whose queue lock is held while a task runs; the file worker
/// does the same. So one connection's chunks are handled one at a time:
/// parse the indented JSON, decode base64, open the file, append, reply. It
/// sets no `TCP_NODELAY`, so Nagle holds a small reply while an earlier one
/// is unacknowledged. This fake does the same work (a JSON DOM, a base64
/// decode, open+append per chunk) on one thread per connection, pads each
/// chunk to `service` plus a seeded `jitter` (the rest of the deployed
/// server's ~37 ms of CPU per MB, and its scheduling noise), and leaves
/// Nagle on. Frames wait in the socket buffers while the worker is busy,
/// so the reply delay grows with the queue in front of it.
#[derive(Clone, Copy, Debug)]
struct DeployedTiming {
    service: Duration,
    jitter: Duration,
    seed: u64,
}

impl DeployedTiming {
    /// 0.8 ms per 32 KiB chunk: the deployed server's ~39 MB/s on this
    /// machine with `fixed:5` (issue 16); jitter up to 0.4 ms.
    const DEFAULT: DeployedTiming = DeployedTiming {
        service: Duration::from_micros(800),
        jitter: Duration::from_micros(400),
        seed: 16,
    };

    fn args(&self) -> Vec<String> {
        vec![
            "--service-us".into(),
            self.service.as_micros().to_string(),
            "--jitter-us".into(),
            self.jitter.as_micros().to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ]
    }

    fn from_args(arg: &dyn Fn(&str) -> Option<String>) -> DeployedTiming {
        let num = |name: &str, default: u64| {
            arg(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let d = DeployedTiming::DEFAULT;
        DeployedTiming {
            service: Duration::from_micros(num("--service-us", d.service.as_micros() as u64)),
            jitter: Duration::from_micros(num("--jitter-us", d.jitter.as_micros() as u64)),
            seed: num("--seed", d.seed),
        }
    }
}

fn child_deployed(dir: PathBuf, timing: DeployedTiming) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().flatten().enumerate() {
            let dir = dir.clone();
            let seed = timing.seed.wrapping_add(i as u64);
            std::thread::spawn(move || deployed_connection(stream, &dir, timing, seed));
        }
    });
    wait_for_stdin_eof();
}

/// One connection of the deployed-timing fake: read a frame, handle it,
/// reply, read the next (see [`DeployedTiming`]).
fn deployed_connection(stream: TcpStream, dir: &Path, timing: DeployedTiming, seed: u64) {
    use base64::Engine as _;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut head = [0u8; 6];
    let mut body = Vec::new();
    let mut reply = Vec::new();
    loop {
        if reader.read_exact(&mut head).is_err() {
            return;
        }
        let id = u16::from_be_bytes([head[0], head[1]]);
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        if len > MAX_BODY_LEN {
            return;
        }
        body.resize(len, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let start = Instant::now();
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            continue; // the deployed server answers nothing to bad JSON
        };
        let name = v["name"].as_str().unwrap_or_default();
        let seq = v["seq"].as_u64().unwrap_or(0) as u32;
        let uid = v["uid"].as_i64().unwrap_or(UID);
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let path = dir.join(uid.to_string()).join(name);
        let _ = std::fs::create_dir_all(path.parent().expect("in a dir"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(seq != 1)
            .truncate(seq == 1)
            .open(&path);
        if let Ok(mut f) = file {
            let _ = f.write_all(&data);
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let jitter = timing.jitter.mul_f64((rng % 1000) as f64 / 1000.0);
        let busy_until = start + timing.service + jitter;
        let left = busy_until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        let rsp = UploadRsp::encode_success(
            MsgId(id).reply(),
            name,
            seq,
            v["last"].as_i64().unwrap_or(0),
            v["md5"].as_str().unwrap_or_default(),
            uid,
            v["sender"].as_i64().unwrap_or(0),
            v["receiver"].as_i64().unwrap_or(0),
            0,
            0,
        );
        reply.clear();
        frame::encode(MsgId(id).reply(), &rsp, &mut reply);
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

fn child_upload(server: &str, file: &Path, md5: &str, window: WindowPolicy) {
    let base_rss_kib = proc_status_kib("VmRSS");
    let run = client_upload(
        server,
        window,
        &[(
            file.to_path_buf(),
            md5.to_string(),
            "memory.bin".to_string(),
        )],
        None,
    );
    let out = json!({
        "secs": run.secs,
        "file_bytes": run.file_bytes,
        "wire_bytes": run.wire_bytes,
        "cpu_s": cpu_seconds(),
        "hwm_kib": proc_status_kib("VmHWM"),
        "base_rss_kib": base_rss_kib,
    });
    println!("{out}");
    std::io::stdout().flush().unwrap();
    chatxfer::runtime::shutdown(Duration::from_secs(2));
}

// ------------------------------------------------------------------ client runs

/// Uploads `files` (path, md5, name) with a fresh [`Client`] (so the window
/// starts afresh) and times it from the first `add_file` to the last
/// completion. The connection is made before the clock starts; md5s are
/// known in advance, as the chat client knows them from the message.
fn client_upload(
    addr: &str,
    window: WindowPolicy,
    files: &[(PathBuf, String, String)],
    peer: Option<u32>,
) -> Run {
    client_upload_capped(addr, window, files, peer, None)
}

/// [`client_upload`] with an upload rate cap (bytes/s on the wire).
fn client_upload_capped(
    addr: &str,
    window: WindowPolicy,
    files: &[(PathBuf, String, String)],
    peer: Option<u32>,
    rate_limit: Option<u64>,
) -> Run {
    let mut cfg = ClientConfig::new(addr);
    cfg.engine.server_storage = ServerStorage::Positional;
    cfg.engine.rate_limit = rate_limit;
    client_upload_with(cfg, window, files, peer)
}

/// [`client_upload`] with the client's settings given (the window is set here).
fn client_upload_with(
    mut cfg: ClientConfig,
    window: WindowPolicy,
    files: &[(PathBuf, String, String)],
    peer: Option<u32>,
) -> Run {
    cfg.engine.window = window;
    let (client, mut events) = Client::start(cfg).expect("client");
    loop {
        match events.blocking_recv().expect("events") {
            ClientEvent::Connected { .. } => break,
            ClientEvent::Disconnected { reason, .. } => eprintln!("bench: connect: {reason}"),
            _ => {}
        }
    }
    let peer_cpu0 = peer.map_or(0.0, process_cpu_seconds);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut file_bytes = 0;
    for (path, md5, name) in files {
        let mut spec = FileSpec::new(name.as_str(), path);
        spec.uid = UID;
        spec.sender = UID;
        spec.receiver = 2;
        spec.message_id = 1;
        spec.md5 = Some(md5.clone());
        client.add_file(path, spec).expect("add_file");
        file_bytes += std::fs::metadata(path).expect("stat").len();
    }
    let mut left = files.len();
    while left > 0 {
        match events.blocking_recv().expect("events") {
            ClientEvent::Transfer(Event::Completed { .. }) => left -= 1,
            ClientEvent::Transfer(Event::Failed { name, failure }) => {
                panic!("{name} failed: {failure}")
            }
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    let peer_cpu_s = peer.map_or(0.0, process_cpu_seconds) - peer_cpu0;
    let wire_bytes = client.stats().bytes_sent;
    chatxfer::runtime::handle()
        .expect("runtime")
        .block_on(client.shutdown(None));
    Run {
        secs,
        file_bytes,
        wire_bytes,
        cpu_s,
        peer_cpu_s,
        ..Run::default()
    }
}

/// The "limit" diagnostic without the runtime: the engine driven by one
/// thread over a blocking socket (write every frame the window allows, then
/// read whatever replies arrived).
fn engine_loop_upload(addr: &str, path: &Path, md5: &str, peer: u32) -> Run {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut engine = Engine::new(EngineConfig {
        window: limit_window(),
        server_storage: ServerStorage::Positional,
        ..EngineConfig::default()
    });
    engine.connected(Instant::now());
    let peer_cpu0 = process_cpu_seconds(peer);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut spec = FileSpec::new("limit-engine.bin", path);
    spec.uid = UID;
    spec.message_id = 1;
    spec.md5 = Some(md5.to_string());
    engine
        .add_file(
            spec,
            Box::new(FileSource::open(path).unwrap()),
            Instant::now(),
        )
        .unwrap();
    let mut out = Vec::with_capacity(4 << 20);
    let mut decoder = FrameDecoder::new(MAX_BODY_LEN);
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut done = false;
    while !done {
        out.clear();
        let now = Instant::now();
        while engine.poll_transmit(now, &mut out).is_some() {}
        if !out.is_empty() {
            stream.write_all(&out).expect("write");
        }
        let n = stream.read(&mut rbuf).expect("read");
        assert!(n > 0, "sink closed");
        decoder.extend(&rbuf[..n]);
        let now = Instant::now();
        while let Some(f) = decoder.next_frame().expect("frame") {
            engine.handle_frame(now, f.id, &f.body);
        }
        while let Some(e) = engine.poll_event() {
            match e {
                Event::Completed { .. } => done = true,
                Event::Failed { failure, .. } => panic!("engine loop: {failure}"),
                _ => {}
            }
        }
    }
    Run {
        secs: t0.elapsed().as_secs_f64(),
        file_bytes: std::fs::metadata(path).unwrap().len(),
        wire_bytes: engine.stats().bytes_sent,
        cpu_s: cpu_seconds() - cpu0,
        peer_cpu_s: process_cpu_seconds(peer) - peer_cpu0,
        ..Run::default()
    }
}

// ------------------------------------------------------------------ inputs

/// A file of pseudo-random (incompressible) bytes; returns its md5.
fn make_file(path: &Path, len: u64, seed: u64) -> String {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    drop(f);
    md5_of_path(path)
}

fn md5_of_path(path: &Path) -> String {
    md5_hex(&mut FileSource::open(path).unwrap()).unwrap()
}

struct Inputs {
    dir: tempfile::TempDir,
    made: Vec<(String, u64, PathBuf, String)>,
}

impl Inputs {
    /// A file of `len` bytes, made once and reused by every run.
    fn file(&mut self, tag: &str, len: u64) -> (PathBuf, String) {
        if let Some((_, _, p, m)) = self.made.iter().find(|(t, l, ..)| t == tag && *l == len) {
            return (p.clone(), m.clone());
        }
        let path = self.dir.path().join(format!("{tag}-{len}.bin"));
        let md5 = make_file(&path, len, self.made.len() as u64 + 1);
        self.made.push((tag.into(), len, path.clone(), md5.clone()));
        (path, md5)
    }
}

/// A directory for a server's storage: in `$CHATXFER_BENCH_STORE_DIR` if set
/// (e.g. /dev/shm, to take the disk out of the figures), else a new
/// directory under `<target>/bench-store`, which is marked a top directory
/// (`chattr +T`) so that ext4 puts each new store in a block group of its
/// own choosing instead of next to its parent.
///
/// Why not the system's temporary directory: on ext4 without a journal
/// (this machine's disk), taking an inode skips every inode of the block
/// group deleted in the last minutes, one buffer lookup each. In `/tmp`,
/// after the test suite or an earlier bench run had deleted thousands of
/// files there, that was half of the server's CPU on small files (`perf`),
/// and the small_files row read 15-20 % of one file where a fresh
/// directory read 26-50 %: a figure of the state of `/tmp`, not of the
/// server (issue 13).
fn store_dir() -> tempfile::TempDir {
    if let Some(d) = std::env::var_os("CHATXFER_BENCH_STORE_DIR") {
        return tempfile::tempdir_in(d).expect("store dir");
    }
    let parent = target_dir().join("bench-store");
    std::fs::create_dir_all(&parent).expect("bench store dir");
    mark_top_directory(&parent);
    tempfile::tempdir_in(&parent).expect("store dir")
}

/// Best effort: file systems other than ext2/3/4 refuse the flag.
fn mark_top_directory(dir: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(d) = std::fs::File::open(dir) {
        use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
        if let Ok(flags) = ioctl_getflags(&d) {
            if !flags.contains(IFlags::TOPDIR) {
                let _ = ioctl_setflags(&d, flags | IFlags::TOPDIR);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
}

/// Removes what a run stored on the server, so disk use stays flat.
fn clean_store(store: &Path) {
    let dir = store.join(UID.to_string());
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn window_label(w: WindowPolicy) -> String {
    w.to_string()
}

fn run_name(scenario: &str, window: &str, run: usize) -> String {
    let window: String = window
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{scenario}-{window}-r{run}.bin")
}

// ------------------------------------------------------------------ scenarios

fn limit(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    let bytes = o.bytes(256 * MIB);
    let (path, md5) = inputs.file("big", bytes);
    let sink = Peer::start(&["sink"]);
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let name = run_name("limit", "client", r);
        runs.push(client_upload(
            &sink.addr,
            limit_window(),
            &[(path.clone(), md5.clone(), name)],
            Some(sink.pid()),
        ));
    }
    rows.push(Row {
        scenario: "limit",
        window: "-".into(),
        files: 1,
        bytes,
        runs,
        note: "runtime Client -> instant-ack sink (child process)".into(),
        peak_rss: false,
        link_mb_s: None,
    });
    let runs = (0..o.runs)
        .map(|_| engine_loop_upload(&sink.addr, &path, &md5, sink.pid()))
        .collect();
    rows.push(Row {
        scenario: "limit_engine",
        window: "-".into(),
        files: 1,
        bytes,
        runs,
        note: "diagnostic: Engine + one blocking socket thread, no runtime".into(),
        peak_rss: false,
        link_mb_s: None,
    });
}

fn windows() -> [WindowPolicy; 3] {
    [
        WindowPolicy::adaptive(),
        WindowPolicy::Fixed(5),
        WindowPolicy::Fixed(1),
    ]
}

fn loopback(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    let bytes = o.bytes(256 * MIB);
    let (path, md5) = inputs.file("big", bytes);
    let store = store_dir();
    let server = start_server(store.path(), None);
    for w in windows() {
        let label = window_label(w);
        let mut runs = Vec::new();
        for r in 0..o.runs {
            let name = run_name("loopback", &label, r);
            runs.push(client_upload(
                &server.addr,
                w,
                &[(path.clone(), md5.clone(), name)],
                Some(server.pid()),
            ));
            clean_store(store.path());
        }
        rows.push(Row {
            scenario: "loopback",
            window: label,
            files: 1,
            bytes,
            runs,
            note: "reference server in a child process".into(),
            peak_rss: false,
            link_mb_s: None,
        });
    }
}

/// The upload rate cap (`EngineConfig::rate_limit`, the options'
/// `rate_limit`) on loopback: the wire rate against the cap, whose target
/// is within 10 %.
fn rate_cap(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    const CAP: u64 = 8_000_000;
    let bytes = o.bytes(48 * MIB);
    let (path, md5) = inputs.file("capped", bytes);
    let store = store_dir();
    let server = start_server(store.path(), None);
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let name = run_name("rate_cap", "adaptive", r);
        let run = client_upload_capped(
            &server.addr,
            WindowPolicy::adaptive(),
            &[(path.clone(), md5.clone(), name)],
            Some(server.pid()),
            Some(CAP),
        );
        eprintln!(
            "rate_cap: run {r}: {:.2} MB/s on the wire against a cap of {:.2} MB/s ({:.3}x)",
            run.wire_bytes as f64 / run.secs / 1e6,
            CAP as f64 / 1e6,
            run.wire_bytes as f64 / run.secs / CAP as f64
        );
        runs.push(run);
        clean_store(store.path());
    }
    rows.push(Row {
        scenario: "rate_cap",
        window: "adaptive".into(),
        files: 1,
        bytes,
        runs,
        note: format!(
            "upload capped at {} MB/s on the wire (target: wire MB/s within 10 %)",
            CAP as f64 / 1e6
        ),
        peak_rss: false,
        link_mb_s: None,
    });
}

/// The deployed-model rows: each window with quick ACKs (the client's
/// default against the deployed server), and adaptive and fixed:5 without
/// them (`ClientConfig::quick_ack` off: the client before issue 16's fix,
/// and what a client with its own socket gets).
fn deployed_windows() -> [(WindowPolicy, bool); 7] {
    [
        (WindowPolicy::adaptive(), true),
        (WindowPolicy::Fixed(5), true),
        (WindowPolicy::Fixed(32), true),
        (WindowPolicy::Fixed(128), true),
        (WindowPolicy::Fixed(512), true),
        (WindowPolicy::adaptive(), false),
        (WindowPolicy::Fixed(5), false),
    ]
}

fn deployed_label((window, quick_ack): (WindowPolicy, bool)) -> String {
    if quick_ack {
        window_label(window)
    } else {
        format!("{} (no quick ACK)", window_label(window))
    }
}

/// Against the deployed server's timing (see [`DeployedTiming`]): the
/// windows take turns, run after run, so a slow phase of the machine hits
/// them alike; at least 7 runs each, as a dip shows in the minimum.
fn deployed_model(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    let bytes = o.bytes(64 * MIB);
    let (path, md5) = inputs.file("deployed", bytes);
    let store = store_dir();
    let dir = store.path().to_str().expect("utf-8 temp path").to_string();
    let mut args = vec!["deployed".to_string(), "--dir".into(), dir];
    args.extend(DeployedTiming::DEFAULT.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Peer::start(&args);
    let windows = deployed_windows();
    let mut runs = vec![Vec::new(); windows.len()];
    for r in 0..o.runs.max(7) {
        // The order turns each round: in a fixed order, a window's place in
        // the round showed up as a difference between windows (issue 16,
        // against the real deployed server).
        for k in 0..windows.len() {
            let i = (r + k) % windows.len();
            let (window, quick_ack) = windows[i];
            let name = run_name("deployed", &deployed_label(windows[i]), r);
            // The deployed server appends, so the client treats it as such.
            let mut cfg = ClientConfig::new(&server.addr);
            cfg.engine.server_storage = ServerStorage::Appending;
            cfg.quick_ack = quick_ack;
            runs[i].push(client_upload_with(
                cfg,
                window,
                &[(path.clone(), md5.clone(), name)],
                Some(server.pid()),
            ));
            clean_store(store.path());
        }
    }
    let t = DeployedTiming::DEFAULT;
    for (w, runs) in windows.into_iter().zip(runs) {
        rows.push(Row {
            scenario: "deployed-model",
            window: deployed_label(w),
            files: 1,
            bytes,
            runs,
            note: format!(
                "deployed-timing fake: one worker per connection, {} µs + up to {} µs per chunk, Nagle on",
                t.service.as_micros(),
                t.jitter.as_micros()
            ),
            peak_rss: false,
            link_mb_s: None,
        });
    }
}

fn wan(
    o: &Opts,
    inputs: &mut Inputs,
    rows: &mut Vec<Row>,
    scenario: &'static str,
    rtt: &str,
    rate: &str,
) {
    let store = store_dir();
    let server = start_server(store.path(), Some((rtt, rate)));
    let link = chatxfer_tools::linkemu::parse_rate(rate).unwrap().unwrap() as f64 / 8.0 / 1e6;
    for w in windows() {
        // Slow windows are latency-bound from the first chunk on (no slow
        // start), so a shorter file measures the same rate in less time.
        let (full, note) = match w {
            WindowPolicy::Fixed(1) => (4 * MIB, "capped at 4 MiB (stop-and-wait)"),
            WindowPolicy::Fixed(_) => (16 * MIB, "capped at 16 MiB"),
            WindowPolicy::Adaptive { .. } => (64 * MIB, ""),
        };
        let bytes = o.bytes(full);
        let (path, md5) = inputs.file("wan", bytes);
        let label = window_label(w);
        let mut runs = Vec::new();
        for r in 0..o.runs {
            let name = run_name(scenario, &label, r);
            runs.push(client_upload(
                &server.addr,
                w,
                &[(path.clone(), md5.clone(), name)],
                Some(server.pid()),
            ));
            clean_store(store.path());
        }
        rows.push(Row {
            scenario,
            window: label,
            files: 1,
            bytes,
            runs,
            note: format!("link emulator {rtt} RTT, {rate}; {note}")
                .trim_end_matches("; ")
                .to_string(),
            peak_rss: false,
            link_mb_s: Some(link),
        });
    }
}

fn small_files(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    const SMALL: u64 = 50 * 1024;
    let count = ((1000.0 * o.scale).round() as usize).max(10);
    let smalls: Vec<(PathBuf, String)> = (0..count)
        .map(|i| inputs.file(&format!("small{i}"), SMALL))
        .collect();
    let total = SMALL * count as u64;
    let (one, one_md5) = inputs.file("one", total);
    let store = store_dir();
    let server = start_server(store.path(), None);
    let w = WindowPolicy::adaptive();
    let mut small_runs = Vec::new();
    let mut one_runs = Vec::new();
    let mut floor_runs = Vec::new();
    let small_bytes = std::fs::read(&smalls[0].0).expect("read a small input");
    // Interleaved, so a slow phase of the machine hits both alike. Every
    // run keeps its files until the end (about 100 MB a round): deleting a
    // round's 1000 files would slow the next round's file creation (see
    // `store_dir`), which a server that does not delete never sees.
    for r in 0..o.runs {
        let files: Vec<_> = smalls
            .iter()
            .enumerate()
            .map(|(i, (p, m))| (p.clone(), m.clone(), format!("small-r{r}-{i}.bin")))
            .collect();
        small_runs.push(client_upload(&server.addr, w, &files, Some(server.pid())));
        let name = run_name("one_file", "adaptive", r);
        one_runs.push(client_upload(
            &server.addr,
            w,
            &[(one.clone(), one_md5.clone(), name)],
            Some(server.pid()),
        ));
    }
    // After the rounds, not between them, so the rows it is compared with
    // run on the same disk state as before this row existed.
    for r in 0..o.runs {
        floor_runs.push(disk_floor(
            &store.path().join(format!("floor-r{r}")),
            &small_bytes,
            count,
        ));
    }
    rows.push(Row {
        scenario: "small_files",
        window: window_label(w),
        files: count,
        bytes: total,
        runs: small_runs,
        note: format!(
            "{count} files of 50 KiB added at once; reference server, store in a fresh directory"
        ),
        peak_rss: false,
        link_mb_s: None,
    });
    rows.push(Row {
        scenario: "disk_floor",
        window: "-".into(),
        files: count,
        bytes: total,
        runs: floor_runs,
        note: format!(
            "no network, no server: the disk's own cost of publishing {count} files of 50 KiB \
             durably as the server does, {FLOOR_BATCH} files per batch"
        ),
        peak_rss: false,
        link_mb_s: None,
    });
    rows.push(Row {
        scenario: "one_file",
        window: window_label(w),
        files: 1,
        bytes: total,
        runs: one_runs,
        note: "the same bytes as one file; reference server".into(),
        peak_rss: false,
        link_mb_s: None,
    });
}

/// Files per batch in [`disk_floor`]: the server's publish batches held 4
/// to 8 files on average in the small_files row here.
const FLOOR_BATCH: usize = 8;

/// What the server's publishing costs the disk alone, with no network, no
/// server and no message index: each file is created as a hidden `.part`,
/// written, its data synced; then the batch is renamed into place and its
/// directory synced once, all in turn. Close to a ceiling for the
/// small_files row on this disk, where syncs issued at once took as long
/// per file as syncs in turn.
fn disk_floor(dir: &Path, data: &[u8], count: usize) -> Run {
    std::fs::create_dir_all(dir).expect("floor dir");
    let dir_handle = std::fs::File::open(dir).expect("open floor dir");
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let ids: Vec<usize> = (0..count).collect();
    for batch in ids.chunks(FLOOR_BATCH) {
        let mut parts = Vec::with_capacity(batch.len());
        for i in batch {
            let part = dir.join(format!(".f{i}.part"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
                .expect("create part");
            f.write_all(data).expect("write part");
            parts.push((f, part, dir.join(format!("f{i}"))));
        }
        for (f, ..) in &parts {
            f.sync_data().expect("sync part");
        }
        for (_, part, name) in &parts {
            std::fs::rename(part, name).expect("rename part");
        }
        dir_handle.sync_all().expect("sync dir");
    }
    Run {
        secs: t0.elapsed().as_secs_f64(),
        file_bytes: data.len() as u64 * count as u64,
        wire_bytes: 0,
        cpu_s: cpu_seconds() - cpu0,
        peer_cpu_s: 0.0,
        hwm_kib: 0,
        base_rss_kib: 0,
    }
}

fn memory(o: &Opts, inputs: &mut Inputs, rows: &mut Vec<Row>) {
    let bytes = o.bytes(2048 * MIB);
    let path = inputs.dir.path().join("sparse.bin");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    let md5 = md5_of_path(&path);
    let store = store_dir();
    let server = start_server(store.path(), None);
    let w = WindowPolicy::adaptive();
    let mut runs = Vec::new();
    for _ in 0..o.runs {
        let server_cpu0 = process_cpu_seconds(server.pid());
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--child", "upload", "--server", &server.addr, "--file"])
            .arg(&path)
            .args(["--md5", &md5, "--window", &window_label(w)])
            .stderr(Stdio::inherit())
            .output()
            .expect("upload child");
        assert!(
            out.status.success(),
            "upload child failed: {:?}",
            out.status
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("child JSON");
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        runs.push(Run {
            secs: f("secs"),
            file_bytes: u("file_bytes"),
            wire_bytes: u("wire_bytes"),
            cpu_s: f("cpu_s"),
            peer_cpu_s: process_cpu_seconds(server.pid()) - server_cpu0,
            hwm_kib: u("hwm_kib"),
            base_rss_kib: u("base_rss_kib"),
        });
        clean_store(store.path());
    }
    let _ = std::fs::remove_file(&path);
    rows.push(Row {
        scenario: "memory",
        window: window_label(w),
        files: 1,
        bytes,
        runs,
        note: "sparse file; client alone in a child process (VmHWM, rusage incl. start-up)".into(),
        peak_rss: true,
        link_mb_s: None,
    });
}

// ------------------------------------------------------------------ report

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

fn report(rows: &[Row], o: &Opts) -> (String, Vec<Value>) {
    let limit = rows.iter().find(|r| r.scenario == "limit").map(Row::mb_s);
    let one_file = rows
        .iter()
        .find(|r| r.scenario == "one_file")
        .map(Row::mb_s);
    let fixed5 = |scenario: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.window == "fixed:5")
            .map(Row::mb_s)
    };
    let best_fixed = |scenario: &str| {
        rows.iter()
            .filter(|r| r.scenario == scenario && r.window.starts_with("fixed:"))
            .map(Row::mb_s)
            .reduce(f64::max)
    };
    let mut md = String::new();
    md.push_str(
        "| scenario | window | data | MB/s | min MB/s | wire MB/s | vs reference | vs fixed:5 | peak RSS | client CPU s/GiB | peer CPU s/GiB | note |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let mut json_rows = Vec::new();
    for r in rows {
        let mb_s = r.mb_s();
        let wire = r.wire_mb_s();
        let (to_limit, to_link, to_one) = match r.scenario {
            "loopback" => (limit.and_then(|l| ratio(mb_s, l)), None, None),
            "wan40" | "wan100" => (None, r.link_mb_s.and_then(|l| ratio(wire, l)), None),
            "small_files" | "disk_floor" => (None, None, one_file.and_then(|l| ratio(mb_s, l))),
            _ => (None, None, None),
        };
        let to_fixed5 = fixed5(r.scenario)
            .filter(|_| r.window != "-")
            .and_then(|f| ratio(mb_s, f));
        let to_best_fixed = best_fixed(r.scenario)
            .filter(|_| r.scenario == "deployed-model")
            .and_then(|b| ratio(mb_s, b));
        let vs_ref = match (to_limit, to_link, to_one) {
            _ if to_best_fixed.is_some() => format!(
                "{:.2}x best fixed, min {:.2}x median",
                to_best_fixed.unwrap_or(f64::NAN),
                r.min_mb_s() / mb_s
            ),
            (Some(x), ..) => format!("{:.0} % of limit", x * 100.0),
            (_, Some(x), _) => format!("{:.0} % of link", x * 100.0),
            (.., Some(x)) => format!("{:.0} % of one_file", x * 100.0),
            _ => "".into(),
        };
        let data = if r.files > 1 {
            format!("{} × {} KiB", r.files, r.bytes / r.files as u64 / 1024)
        } else {
            let mib = format!("{:.4}", r.bytes as f64 / MIB as f64);
            format!("{} MiB", mib.trim_end_matches('0').trim_end_matches('.'))
        };
        let rss = match (r.peak_rss_mib(), r.base_rss_mib()) {
            (Some(p), Some(b)) => format!("{p:.1} MiB (idle {b:.1})"),
            _ => "".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {} |\n",
            r.scenario,
            r.window,
            data,
            mb_s,
            r.min_mb_s(),
            wire,
            vs_ref,
            to_fixed5.map_or(String::new(), |x| format!("{x:.2}x")),
            rss,
            r.cpu_s_per_gib(),
            r.peer_cpu_s_per_gib(),
            r.note,
        ));
        json_rows.push(json!({
            "scenario": r.scenario,
            "window": r.window,
            "files": r.files,
            "bytes": r.bytes,
            "runs": r.runs.len(),
            "mb_s": mb_s,
            "min_mb_s": r.min_mb_s(),
            "ratio_to_best_fixed": to_best_fixed,
            "mb_s_runs": r.runs.iter().map(|x| x.file_bytes as f64 / x.secs / 1e6).collect::<Vec<_>>(),
            "wire_mb_s": wire,
            "ratio_to_limit": to_limit,
            "ratio_to_link": to_link,
            "link_mb_s": r.link_mb_s,
            "ratio_to_one_file": to_one,
            "ratio_to_fixed5": to_fixed5,
            "peak_rss_mib": r.peak_rss_mib(),
            "idle_rss_mib": r.base_rss_mib(),
            "cpu_s_per_gib": r.cpu_s_per_gib(),
            "peer_cpu_s_per_gib": r.peer_cpu_s_per_gib(),
            "scale": o.scale,
            "note": r.note,
        }));
    }
    (md, json_rows)
}

fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // <target>/<profile>/deps/throughput-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child_main(&args[1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`.
        eprintln!("throughput: run it with `cargo bench --bench throughput`; skipped");
        return;
    }
    let o = Opts::from_env(&args);
    let mut inputs = Inputs {
        dir: tempfile::tempdir().unwrap(),
        made: Vec::new(),
    };
    eprintln!(
        "throughput: {} run(s) per row, scale {}, scenarios {}",
        o.runs,
        o.scale,
        if o.only.is_empty() {
            "all".to_string()
        } else {
            o.only.join(",")
        }
    );
    let mut rows = Vec::new();
    type Scenario = fn(&Opts, &mut Inputs, &mut Vec<Row>);
    let plan: [(&str, Scenario); 8] = [
        ("limit", limit),
        ("loopback", loopback),
        ("rate_cap", rate_cap),
        ("deployed-model", deployed_model),
        ("wan40", |o, i, r| wan(o, i, r, "wan40", "40ms", "200mbit")),
        ("wan100", |o, i, r| {
            wan(o, i, r, "wan100", "100ms", "50mbit")
        }),
        ("small_files", small_files),
        ("memory", memory),
    ];
    for (name, f) in plan {
        let wanted = o.wants(name) || (name == "small_files" && o.wants("one_file"));
        if wanted {
            let t = Instant::now();
            f(&o, &mut inputs, &mut rows);
            eprintln!(
                "throughput: {name} done in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let (md, json_rows) = report(&rows, &o);
    println!("{md}");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("throughput.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json_rows).unwrap()).unwrap();
    eprintln!("throughput: wrote {}", path.display());
    chatxfer::runtime::shutdown(Duration::from_secs(2));
}
