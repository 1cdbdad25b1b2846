//! Criterion micro-benchmarks of the per-chunk hot path:
//! * `encode_chunk_32k`: one 32 KiB chunk into a frame (`ChunkFrame::encode`,
//!   base64 included) into a reused buffer;
//! * `decode_reply`: one success reply as the reference server sends it
//!   (`UploadRsp::decode`);
//! * `engine_ack`: `Engine::handle_frame` for one success reply, on a
//!   steady-state window of 32 in-flight chunks (refilling the window and
//!   encoding the replies happen outside the timed part).
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use chatxfer::engine::{Engine, EngineConfig, FileSpec, MemorySource, ServerStorage, WindowPolicy};
use chatxfer::protocol::messages::UploadRsp;
use chatxfer::protocol::{frame, ChunkFrame, MsgId, DEFAULT_CHUNK_SIZE, MAX_BODY_LEN};

const MD5: &str = "0123456789abcdef0123456789abcdef";

fn chunk_frame(seq: u32) -> ChunkFrame<'static> {
    ChunkFrame {
        id: MsgId::IMG_CHAT_UPLOAD_REQ,
        name: "holiday-video.mp4",
        md5: MD5,
        seq,
        trans_size: seq as u64 * DEFAULT_CHUNK_SIZE as u64,
        total_size: 96_000_000,
        last: false,
        last_seq: 2930,
        uid: 1,
        sender: 1,
        receiver: 2,
        message_id: 10,
        token: "",
    }
}

fn encode_chunk(c: &mut Criterion) {
    let data: Vec<u8> = (0..DEFAULT_CHUNK_SIZE).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Bytes(DEFAULT_CHUNK_SIZE as u64));
    g.bench_function("encode_chunk_32k", |b| {
        b.iter(|| {
            out.clear();
            black_box(chunk_frame(black_box(1234)).encode(black_box(&data), &mut out));
        })
    });
    g.finish();
}

fn decode_reply(c: &mut Criterion) {
    // What the reference server answers to a 1037 (sizes as strings).
    let body = UploadRsp::encode_success(
        MsgId::IMG_CHAT_UPLOAD_RSP,
        "holiday-video.mp4",
        1234,
        0,
        MD5,
        1,
        1,
        2,
        1234 * 32_768,
        96_000_000,
    );
    c.bench_function("hot_path/decode_reply", |b| {
        b.iter(|| {
            black_box(UploadRsp::decode(MsgId::IMG_CHAT_UPLOAD_RSP, black_box(&body)).unwrap())
        })
    });
}

/// An engine with one file sending through a full window of `window` chunks.
struct Steady {
    engine: Engine,
    source: MemorySource,
    file: u32,
    now: Instant,
    out: Vec<u8>,
    /// Replies for the chunks in flight, oldest first.
    replies: std::collections::VecDeque<(MsgId, Vec<u8>)>,
}

impl Steady {
    fn new(window: u32) -> Steady {
        let mut engine = Engine::new(EngineConfig {
            window: WindowPolicy::Fixed(window),
            server_storage: ServerStorage::Positional,
            ..EngineConfig::default()
        });
        let now = Instant::now();
        engine.connected(now);
        let mut s = Steady {
            engine,
            // 1024 chunks of 32 KiB; the bytes are shared by every file.
            source: MemorySource::new(vec![7u8; 1024 * DEFAULT_CHUNK_SIZE as usize]),
            file: 0,
            now,
            out: Vec::with_capacity(64 * 1024),
            replies: Default::default(),
        };
        s.add_file();
        s.refill();
        s
    }

    fn add_file(&mut self) {
        self.file += 1;
        let mut spec = FileSpec::new(format!("bench-{}.bin", self.file), "bench.bin");
        spec.md5 = Some(MD5.into());
        spec.uid = 1;
        spec.message_id = 1;
        self.engine
            .add_file(spec, Box::new(self.source.clone()), self.now)
            .unwrap();
    }

    /// Fills the window again and encodes the reply to every new chunk.
    fn refill(&mut self) {
        loop {
            self.out.clear();
            let Some(t) = self.engine.poll_transmit(self.now, &mut self.out) else {
                if self.engine.in_flight() == 0 {
                    // The file completed: the next one keeps the window busy.
                    self.add_file();
                    continue;
                }
                break;
            };
            let (id, _, _) = frame::split_frame(&self.out, MAX_BODY_LEN)
                .unwrap()
                .unwrap();
            let name = format!("bench-{}.bin", self.file);
            let reply = UploadRsp::encode_success(
                id.reply(),
                &name,
                t.seq,
                t.last as i64,
                MD5,
                1,
                0,
                0,
                0,
                1024 * DEFAULT_CHUNK_SIZE as u64,
            );
            self.replies.push_back((id.reply(), reply));
        }
        while self.engine.poll_event().is_some() {}
    }
}

fn engine_ack(c: &mut Criterion) {
    let mut s = Steady::new(32);
    c.bench_function("hot_path/engine_ack_fixed32", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // Acknowledge what is in flight (timed), then refill (untimed).
                let batch = (s.replies.len() as u64).min(iters - done);
                let replies: Vec<_> = s.replies.drain(..batch as usize).collect();
                s.now += Duration::from_micros(50);
                let now = s.now;
                let t0 = Instant::now();
                for (id, body) in &replies {
                    s.engine.handle_frame(now, *id, body);
                }
                timed += t0.elapsed();
                done += batch;
                s.refill();
            }
            timed
        })
    });
}

criterion_group!(benches, encode_chunk, decode_reply, engine_ack);
criterion_main!(benches);
