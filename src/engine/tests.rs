//! Deterministic tests of the engine: a virtual clock and a simulated server
//! (`sim`), scripted replies where the order matters.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::pair::Pair;
use super::sim::{Sim, SimConfig};
use super::*;
use crate::protocol::messages::DownChunkRsp;
use crate::protocol::messages::UploadRsp;
use crate::protocol::ErrorCode;
use crate::protocol::{frame, messages::UploadChunkReq, MAX_BODY_LEN};
use crate::runtime::files::FileSource;

/// The engine takes no upload without its md5 (it never reads a whole
/// file); these tests let it be computed from the in-memory source.
impl Engine {
    fn add_file_hashing(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        now: Instant,
    ) -> Result<FileId> {
        let (spec, source) = with_md5(spec, source);
        self.add_file(spec, source, now)
    }

    fn add_resumed_hashing(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        acked: &AckRecord,
        now: Instant,
    ) -> Result<FileId> {
        let (spec, source) = with_md5(spec, source);
        self.add_resumed(spec, source, acked, now)
    }
}

fn with_md5(
    mut spec: FileSpec,
    mut source: Box<dyn ChunkSource>,
) -> (FileSpec, Box<dyn ChunkSource>) {
    if spec.md5.is_none() {
        spec.md5 = Some(md5_hex(source.as_mut()).expect("in-memory sources read"));
    }
    (spec, source)
}

const CHUNK: u32 = 32_768;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn config(window: WindowPolicy, storage: ServerStorage) -> EngineConfig {
    EngineConfig {
        window,
        server_storage: storage,
        ..EngineConfig::default()
    }
}

fn spec(name: &str) -> FileSpec {
    let mut s = FileSpec::new(name, format!("/mem/{name}"));
    s.uid = 7;
    s.sender = 7;
    s.receiver = 9;
    s.message_id = 100;
    s.token = "tok".into();
    s
}

/// An upload without a login token: it never probes the server's stored
/// size, so it behaves exactly as before size probes existed.
fn spec_without_token(name: &str) -> FileSpec {
    let mut s = spec(name);
    s.token.clear();
    s
}

fn add(sim: &mut Sim, name: &str, bytes: &[u8]) -> FileId {
    sim.engine
        .add_file_hashing(
            spec(name),
            Box::new(MemorySource::new(bytes.to_vec())),
            sim.now,
        )
        .unwrap()
}

fn sim(window: WindowPolicy, storage: ServerStorage) -> Sim {
    Sim::new(
        Engine::new(config(window, storage)),
        SimConfig {
            storage,
            ..SimConfig::default()
        },
    )
}

fn state(sim: &Sim, name: &str) -> FileState {
    sim.engine.file_status(name).unwrap().state
}

fn assert_stored(sim: &Sim, name: &str, bytes: &[u8]) {
    let stored = sim
        .server
        .stored(name, sim.cfg.storage)
        .expect("server has the file");
    assert!(
        stored == bytes,
        "{name}: stored {} bytes differ from the {} source bytes",
        stored.len(),
        bytes.len()
    );
}

/// Sends everything the engine offers now, decoding each frame.
fn drain(engine: &mut Engine, now: Instant) -> Vec<(MsgId, serde_json::Value)> {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    while engine.poll_transmit(now, &mut out).is_some() {}
    let mut rest = &out[..];
    while let Some((id, body, used)) = frame::split_frame(rest, MAX_BODY_LEN).unwrap() {
        frames.push((id, serde_json::from_slice(body).unwrap()));
        rest = &rest[used..];
    }
    frames
}

fn ack(engine: &mut Engine, now: Instant, id: MsgId, name: &str, seq: u32) {
    let body = UploadRsp::encode_success(id.reply(), name, seq, 0, "m", 7, 7, 9, 0, 0);
    engine.handle_frame(now, id.reply(), &body);
}

fn events(engine: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| engine.poll_event()).collect()
}

#[test]
fn one_file_goes_1041_then_waits_then_1037_up_to_the_window() {
    let mut p = Pair::new(config(WindowPolicy::Fixed(5), ServerStorage::Appending));
    p.upload(spec("a"), pattern(10 * CHUNK as usize + 5, 1));
    let first = p.client_sends();
    assert_eq!(first.len(), 1, "only seq 1 before its 1042");
    let c = first[0].chunk();
    assert_eq!((first[0].id, c.seq), (MsgId(1041), 1));
    assert_eq!(c.total_size.0, 10 * CHUNK as u64 + 5);
    assert!(first[0].is_string("total_size"), "1041 sizes are strings");
    assert!(p.client_sends().is_empty());
    p.server_acks(&first[0]);
    let burst = p.client_sends();
    let seqs: Vec<_> = burst.iter().map(|s| (s.id.0, s.chunk().seq)).collect();
    assert_eq!(
        seqs,
        vec![(1037, 2), (1037, 3), (1037, 4), (1037, 5), (1037, 6)]
    );
    let c = burst[0].chunk();
    assert_eq!((c.last_seq, c.trans_size.0), (Some(11), 2 * CHUNK as u64));
}

#[test]
fn zero_byte_file_is_one_1041_and_completes_on_its_1042() {
    let mut p = Pair::new(EngineConfig::default());
    p.upload(spec("empty"), Vec::new());
    let sent = p.client_sends();
    assert_eq!(sent.len(), 1);
    let c = sent[0].chunk();
    assert_eq!(sent[0].id, MsgId(1041));
    assert_eq!(
        (&*c.data, c.trans_size.0, c.total_size.0, c.last),
        ("", 0, 0, 1)
    );
    p.server_acks(&sent[0]);
    let ev = p.events();
    assert!(ev.contains(&Event::Completed {
        name: "empty".into(),
        md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
        bytes: 0
    }));
    assert!(ev.contains(&Event::Progress {
        name: "empty".into(),
        acked: 0,
        total: 0,
        rate: 0.0
    }));
}

#[test]
fn sizes_around_the_chunk_boundary_arrive_byte_identical() {
    for len in [
        1,
        CHUNK as usize - 1,
        CHUNK as usize,
        CHUNK as usize + 1,
        3 * CHUNK as usize,
    ] {
        for storage in [ServerStorage::Appending, ServerStorage::Positional] {
            let mut s = sim(WindowPolicy::Fixed(5), storage);
            let bytes = pattern(len, 3);
            add(&mut s, "f", &bytes);
            s.run(Duration::from_secs(60));
            assert_eq!(state(&s, "f"), FileState::Completed, "len {len}");
            assert_stored(&s, "f", &bytes);
            let status = s.engine.file_status("f").unwrap();
            assert_eq!(status.max_seq as usize, len.div_ceil(CHUNK as usize));
            assert_eq!(s.server.append_violations, 0);
        }
    }
}

/// Deployed client bug: a second file's 1037 chunks can go out before its 1042.
#[test]
fn no_file_sends_past_seq_1_before_its_own_1042() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    s.cfg.one_way_delay = Duration::from_millis(20);
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| pattern(5 * CHUNK as usize + i, i as u8))
        .collect();
    for (i, b) in files.iter().enumerate() {
        add(&mut s, &format!("f{i}"), b);
    }
    s.run(Duration::from_secs(60));
    for (i, b) in files.iter().enumerate() {
        assert_stored(&s, &format!("f{i}"), b);
    }
    // The simulated server logs in arrival order; no 1037 of a name before its 1041.
    let mut seen_first = std::collections::HashSet::new();
    for (id, name, seq) in &s.server.log {
        if *seq == 1 {
            assert_eq!(*id, MsgId(1041));
            seen_first.insert(name.clone());
        } else {
            assert!(
                seen_first.contains(name),
                "{name} seq {seq} before its first chunk"
            );
        }
    }
    assert_eq!(s.server.append_violations, 0);
}

/// Deployed client bug: resume restarts from the last acknowledged seq and
/// re-sends chunks still in flight, which an appending server duplicates.
#[test]
fn pause_then_resume_before_in_flight_acks_sends_no_duplicate() {
    let mut p = Pair::new(config(WindowPolicy::Fixed(5), ServerStorage::Appending));
    p.upload(spec("v"), pattern(20 * CHUNK as usize, 5));
    let first = p.client_sends();
    p.server_acks(&first[0]);
    let burst = p.client_sends();
    assert_eq!(burst.len(), 5, "seqs 2..=6 in flight");
    p.engine.pause("v", p.now).unwrap();
    p.server_acks(&burst[0]); // one ack drains while paused
    assert!(
        p.client_sends().is_empty(),
        "a paused file sends nothing new"
    );
    p.engine.resume("v", p.now).unwrap(); // 3..=6 still in flight
    let after = p.client_sends();
    let seqs: Vec<_> = after.iter().map(|s| (s.id.0, s.chunk().seq)).collect();
    assert_eq!(
        seqs,
        vec![(1043, 7)],
        "continues after the highest chunk sent, first as 1043"
    );
    assert_eq!(after[0].chunk().trans_size.0, 7 * CHUNK as u64);
    assert!(!after[0].is_string("trans_size"), "1043 sizes are ints");
}

/// A paused file's chunks acknowledged after the pause still reach the
/// app as a (coalesced) progress event: its timer counts though the file
/// no longer sends. And a file that never sent arms no timer.
#[test]
fn a_paused_file_still_reports_the_progress_of_its_last_acks() {
    let mut p = Pair::new(config(WindowPolicy::Fixed(5), ServerStorage::Positional));
    p.upload(spec("v"), pattern(20 * CHUNK as usize, 5));
    let first = p.client_sends();
    p.server_acks(&first[0]);
    let burst = p.client_sends();
    p.events();
    p.engine.pause("v", p.now).unwrap();
    for chunk in &burst {
        p.server_acks(chunk);
    }
    let due = p
        .engine
        .poll_timeout()
        .expect("a progress event is pending");
    p.advance(due - p.now);
    let acked: Vec<u64> = p
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Progress { acked, .. } => Some(acked),
            _ => None,
        })
        .collect();
    assert_eq!(acked.last(), Some(&(6 * CHUNK as u64)), "{acked:?}");

    let mut idle = Pair::new(config(WindowPolicy::Fixed(5), ServerStorage::Positional));
    let mut held = spec("h");
    held.hold = true; // registered at send, never sent
    held.message_id = 0;
    idle.upload(held, pattern(CHUNK as usize, 1));
    assert_eq!(idle.engine.poll_timeout(), None);
}

#[test]
fn pause_resume_cycles_against_an_appending_server_keep_the_file_exact() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    let bytes = pattern(40 * CHUNK as usize + 17, 9);
    add(&mut s, "v", &bytes);
    for i in 0..200 {
        s.step();
        if state(&s, "v") == FileState::Completed {
            break;
        }
        if i % 7 == 3 {
            s.engine.pause("v", s.now).unwrap();
        }
        if i % 7 == 5 {
            s.engine.resume("v", s.now).unwrap();
        }
    }
    let _ = s.engine.resume("v", s.now);
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert_stored(&s, "v", &bytes);
    assert_eq!(s.server.append_violations, 0);
    assert!(
        s.server.log.iter().any(|(id, _, _)| *id == MsgId(1043)),
        "resumes use 1043"
    );
}

#[test]
fn fixed_window_bounds_in_flight_across_files() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    for i in 0..6 {
        add(&mut s, &format!("f{i}"), &pattern(8 * CHUNK as usize, i));
    }
    s.run(Duration::from_secs(60));
    assert!(s.engine.is_idle());
    assert_eq!(s.max_in_flight, 5);
}

/// An error reply without name or seq, overtaking an earlier success: the
/// failing file fails with the server's code, the other completes.
#[test]
fn error_reply_without_name_is_attributed_by_elimination() {
    let mut s = sim(WindowPolicy::Fixed(8), ServerStorage::Appending);
    s.cfg.service_time = Duration::from_millis(3); // successes queue; errors overtake them
    s.server.error_rule = Some(Box::new(|_, name, seq| {
        (name == "bad" && seq == 3).then_some(ErrorCode::FileWritePermissionFailed)
    }));
    let good = pattern(12 * CHUNK as usize, 1);
    add(&mut s, "good", &good);
    add(&mut s, "bad", &pattern(12 * CHUNK as usize, 2));
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "good"), FileState::Completed);
    assert_stored(&s, "good", &good);
    assert_eq!(state(&s, "bad"), FileState::Failed);
    assert!(s.events.contains(&Event::Failed {
        name: "bad".into(),
        failure: Failure::Server {
            code: ErrorCode::FileWritePermissionFailed,
            seq: 3
        }
    }));
    // The failed file's queued chunks were dropped; its last chunk never went.
    assert!(!s.server.files["bad"].last_seen);
}

/// Scripted: two requests in flight, the error arrives first (overtaking),
/// then the success for the other file; only then is the error attributed.
#[test]
fn overtaking_error_waits_for_elimination() {
    let mut e = Engine::new(config(WindowPolicy::Fixed(5), ServerStorage::Appending));
    let now = Instant::now();
    e.connected(now);
    e.add_file_hashing(
        spec_without_token("a"),
        Box::new(MemorySource::new(pattern(3 * CHUNK as usize, 1))),
        now,
    )
    .unwrap();
    e.add_file_hashing(
        spec_without_token("b"),
        Box::new(MemorySource::new(pattern(3 * CHUNK as usize, 2))),
        now,
    )
    .unwrap();
    assert_eq!(drain(&mut e, now).len(), 2); // a:1, b:1
    ack(&mut e, now, MsgId(1041), "a", 1);
    ack(&mut e, now, MsgId(1041), "b", 1);
    let sent = drain(&mut e, now); // a:2, b:2, a:3? (round-robin) — last chunks held? no error yet
    assert_eq!(sent.len(), 4);
    events(&mut e);
    // Error for b:2 arrives before a:2's success.
    e.handle_frame(now, MsgId(1038), br#"{"error":1015}"#);
    assert!(
        !events(&mut e)
            .iter()
            .any(|ev| matches!(ev, Event::Failed { .. })),
        "not attributable yet"
    );
    ack(&mut e, now, MsgId(1037), "a", 2);
    ack(&mut e, now, MsgId(1037), "a", 3);
    // Candidates left: b:2 and b:3. b:3's success proves b:2 errored (per-name order).
    ack(&mut e, now, MsgId(1037), "b", 3);
    let ev = events(&mut e);
    assert!(
        ev.contains(&Event::Failed {
            name: "b".into(),
            failure: Failure::Server {
                code: ErrorCode::FileWritePermissionFailed,
                seq: 2
            }
        }),
        "{ev:?}"
    );
    assert_eq!(e.file_status("a").unwrap().state, FileState::Completed);
    assert_eq!(e.in_flight(), 0);
}

#[test]
fn unknown_and_duplicate_replies_are_counted_not_fatal() {
    let mut e = Engine::new(EngineConfig::default());
    let now = Instant::now();
    e.connected(now);
    e.add_file_hashing(
        spec("a"),
        Box::new(MemorySource::new(pattern(3 * CHUNK as usize, 1))),
        now,
    )
    .unwrap();
    drain(&mut e, now);
    ack(&mut e, now, MsgId(1041), "a", 1);
    ack(&mut e, now, MsgId(1041), "a", 1);
    ack(&mut e, now, MsgId(1037), "nobody", 2);
    ack(&mut e, now, MsgId(1037), "a", 99);
    e.handle_frame(now, MsgId(1039), b"{}");
    e.handle_frame(now, MsgId(1038), b"\xff garbage");
    let st = e.stats();
    assert_eq!(
        (
            st.duplicate_acks,
            st.unknown_replies,
            st.ignored_frames,
            st.malformed_replies
        ),
        (2, 1, 1, 1)
    );
    assert!(events(&mut e)
        .iter()
        .any(|ev| matches!(ev, Event::ProtocolViolation { .. })));
    assert_eq!(e.file_status("a").unwrap().acked_prefix, 1);
}

#[test]
fn cut_connection_resumes_from_first_unacked_on_a_positional_server() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Positional);
    let bytes = pattern(30 * CHUNK as usize, 4);
    add(&mut s, "v", &bytes);
    for _ in 0..8 {
        s.step();
    }
    let acked = s.engine.file_status("v").unwrap().acked_prefix;
    assert!(acked > 1 && s.engine.in_flight() > 0);
    let log_before = s.server.log.len();
    s.cut();
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert_stored(&s, "v", &bytes);
    let (id, _, seq) = &s.server.log[log_before];
    assert_eq!((*id, *seq), (MsgId(1043), acked + 1));
}

/// Without a token (nothing to probe with) the behaviour is exactly what it
/// was before size probes: the file starts again from seq 1, nothing else
/// is asked of the server.
#[test]
fn cut_connection_restarts_from_seq_1_on_an_appending_server_when_acks_were_lost() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    let bytes = pattern(30 * CHUNK as usize, 4);
    s.engine
        .add_file_hashing(
            spec_without_token("v"),
            Box::new(MemorySource::new(bytes.clone())),
            s.now,
        )
        .unwrap();
    for _ in 0..8 {
        s.step();
    }
    assert!(s.engine.in_flight() > 0);
    let log_before = s.server.log.len();
    s.cut();
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert_stored(&s, "v", &bytes);
    let (id, _, seq) = &s.server.log[log_before];
    assert_eq!(
        (*id, *seq),
        (MsgId(1041), 1),
        "1041 truncates: the only safe restart"
    );
    assert_eq!(s.engine.stats().restarts, 1);
    assert_eq!(s.engine.stats().probes, 0);
    assert!(s.server.down_log.is_empty(), "no 1047 without a token");
}

#[test]
fn drained_pause_resumes_exactly_after_a_cut_even_on_an_appending_server() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    let bytes = pattern(30 * CHUNK as usize, 4);
    add(&mut s, "v", &bytes);
    for _ in 0..6 {
        s.step();
    }
    s.engine.pause("v", s.now).unwrap();
    s.run(Duration::from_secs(1)); // in-flight chunks drain
    assert_eq!(s.engine.in_flight(), 0);
    let next = s.engine.file_status("v").unwrap().next_seq;
    s.cut();
    s.engine.resume("v", s.now).unwrap();
    let log_before = s.server.log.len();
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert_stored(&s, "v", &bytes);
    assert_eq!(s.server.log[log_before].0, MsgId(1043));
    assert_eq!(s.server.log[log_before].2, next);
    assert_eq!(s.server.append_violations, 0);
}

/// A 1043 with a size above i32::MAX kills the deployed server: files of
/// 2 GiB or more resume with 1037.
#[test]
fn files_of_2_gib_or_more_never_use_1043() {
    struct Zeros(u64);
    impl ChunkSource for Zeros {
        fn len(&self) -> u64 {
            self.0
        }
        fn read_at(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
    }
    let mut e = Engine::new(config(WindowPolicy::Fixed(5), ServerStorage::Positional));
    let now = Instant::now();
    e.connected(now);
    let mut sp = spec("big");
    sp.md5 = Some("0".repeat(32));
    e.add_file_hashing(sp, Box::new(Zeros(1 << 31)), now)
        .unwrap();
    drain(&mut e, now);
    ack(&mut e, now, MsgId(1041), "big", 1);
    drain(&mut e, now);
    ack(&mut e, now, MsgId(1037), "big", 2);
    e.connection_lost(now);
    e.connected(now);
    let frames = drain(&mut e, now);
    assert_eq!(frames[0].0, MsgId(1037));
    assert_eq!(frames[0].1["seq"], 3);
    assert_eq!(frames[0].1["total_size"], "2147483648");
    e.pause("big", now).unwrap();
    e.resume("big", now).unwrap();
    assert!(drain(&mut e, now).iter().all(|(id, _)| *id != MsgId(1043)));
}

#[test]
fn server_that_lost_its_record_after_a_cut_gets_the_file_again_from_seq_1() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Positional);
    let bytes = pattern(20 * CHUNK as usize, 6);
    add(&mut s, "v", &bytes);
    for _ in 0..5 {
        s.step();
    }
    s.server.files.get_mut("v").unwrap().record = false; // Redis key expired
    s.cut();
    s.run(Duration::from_secs(60));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert_stored(&s, "v", &bytes);
    assert_eq!(s.engine.stats().restarts, 1);
}

#[test]
fn progress_is_coalesced_and_the_final_100_percent_always_arrives() {
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    s.cfg.bandwidth = Some(12.5e6); // 100 Mbit/s: the file takes about 2 s
    let bytes = pattern(600 * CHUNK as usize, 8);
    add(&mut s, "v", &bytes);
    s.run(Duration::from_secs(120));
    let progress: Vec<_> = s
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                acked, total, rate, ..
            } => Some((*acked, *total, *rate)),
            _ => None,
        })
        .collect();
    assert!(
        progress.len() < 600 / 4,
        "{} progress events for 600 chunks",
        progress.len()
    );
    assert!(progress.len() >= 5);
    let (acked, total, rate) = *progress.last().unwrap();
    assert_eq!((acked, total), (bytes.len() as u64, bytes.len() as u64));
    assert!(rate > 1e6, "rate {rate}");
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0));
    let last_progress = s
        .events
        .iter()
        .rposition(|e| matches!(e, Event::Progress { .. }))
        .unwrap();
    let completed = s
        .events
        .iter()
        .position(|e| matches!(e, Event::Completed { .. }))
        .unwrap();
    assert!(last_progress < completed);
}

#[test]
fn a_silent_server_is_detected_and_an_unconfirmed_last_chunk_is_not_resent() {
    // Stop-and-wait, so the last chunk is on the link when the server goes silent.
    let mut s = sim(WindowPolicy::Fixed(1), ServerStorage::Appending);
    let bytes = pattern(3 * CHUNK as usize, 1);
    add(&mut s, "v", &bytes);
    // Let everything but the last chunk's reply through, then go silent.
    while s.engine.file_status("v").unwrap().acked_prefix < 2 {
        s.step();
    }
    s.server.silent = true;
    s.run(Duration::from_secs(31));
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, Event::ConnectionStalled { .. })));
    assert!(
        s.events.iter().any(|e| matches!(
            e,
            Event::Failed {
                failure: Failure::Unconfirmed { seq: 3, .. },
                ..
            }
        )),
        "{:?}",
        s.events
    );
}

#[test]
fn a_file_changed_while_uploading_fails_with_a_clear_error() {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(&pattern(10 * CHUNK as usize, 1)).unwrap();
    tmp.flush().unwrap();
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
    let src = FileSource::open(tmp.path()).unwrap();
    s.engine
        .add_file_hashing(spec("v"), Box::new(src), s.now)
        .unwrap();
    for _ in 0..3 {
        s.step();
    }
    tmp.write_all(b"more").unwrap();
    tmp.flush().unwrap();
    s.run(Duration::from_secs(10));
    assert_eq!(state(&s, "v"), FileState::Failed);
    let msg = s
        .events
        .iter()
        .find_map(|e| match e {
            Event::Failed {
                failure: Failure::Source { message },
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(msg.contains("changed while uploading"), "{msg}");
    assert!(!s.server.files["v"].last_seen);
}

#[test]
fn add_file_rejects_bad_input_and_queues_nothing() {
    let mut e = Engine::new(EngineConfig::default());
    let now = Instant::now();
    let src = || Box::new(MemorySource::new(vec![1, 2, 3]));
    for bad in ["", "a/b", "a\\b", "..", "x..y", "a\0b"] {
        assert!(
            matches!(
                e.add_file_hashing(spec(bad), src(), now),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    let mut big = spec("big");
    big.chunk_size = Some(40 * 1024);
    assert!(matches!(
        e.add_file_hashing(big, Box::new(MemorySource::new(vec![0; 100_000])), now),
        Err(Error::ChunkTooLarge { .. })
    ));
    let mut zero = spec("z");
    zero.chunk_size = Some(0);
    assert!(matches!(
        e.add_file_hashing(zero, src(), now),
        Err(Error::ZeroChunk { .. })
    ));
    let mut m = spec("m");
    m.md5 = Some("xyz".into());
    assert!(matches!(
        e.add_file_hashing(m, src(), now),
        Err(Error::InvalidMd5 { .. })
    ));
    // A chat upload without its message (the deployed server would crash
    // marking message 0); an avatar has none and needs none.
    for id in [0, -1, i64::MIN] {
        let mut m = spec("no-message");
        m.message_id = id;
        assert!(matches!(
            e.add_file_hashing(m, src(), now),
            Err(Error::InvalidMessageId { message_id, .. }) if message_id == id
        ));
    }
    assert!(e.statuses().is_empty());
    let mut avatar = spec("avatar.png");
    avatar.message_id = 0;
    avatar.avatar = true;
    e.add_file_hashing(avatar, src(), now).unwrap();
    e.cancel("avatar.png", now).unwrap();
    e.add_file_hashing(spec("ok"), src(), now).unwrap();
    assert!(matches!(
        e.add_file_hashing(spec("ok"), src(), now),
        Err(Error::DuplicateName { .. })
    ));
    assert_eq!(e.file_status("ok").unwrap().md5, md5_of(&[1, 2, 3]));
    assert!(matches!(
        e.pause("nope", now),
        Err(Error::UnknownName { .. })
    ));
}

/// The client registers an upload when the user presses send and learns
/// its message id only from the ChatServer's 1036 reply: held with id 0 it
/// waits, cannot start without the id, and its first 1041 carries the id
/// given; the id cannot change once a chunk has gone.
#[test]
fn upload_registered_at_send_starts_with_the_id_given_later() {
    let mut e = Engine::new(config(WindowPolicy::Fixed(5), ServerStorage::Positional));
    let now = Instant::now();
    e.connected(now);
    let mut at_send = spec("pic.png");
    at_send.message_id = 0;
    // Not held: it would start without an id.
    assert!(matches!(
        e.add_file_hashing(
            at_send.clone(),
            Box::new(MemorySource::new(pattern(3 * CHUNK as usize, 2))),
            now
        ),
        Err(Error::InvalidMessageId { message_id: 0, .. })
    ));
    at_send.hold = true;
    e.add_file_hashing(
        at_send,
        Box::new(MemorySource::new(pattern(3 * CHUNK as usize, 2))),
        now,
    )
    .unwrap();
    assert!(matches!(
        e.resume("pic.png", now),
        Err(Error::InvalidMessageId { .. })
    ));
    assert_eq!(e.file_status("pic.png").unwrap().state, FileState::Paused);
    assert!(drain(&mut e, now).is_empty());
    for bad in [0, -5] {
        assert!(matches!(
            e.set_message_id("pic.png", bad),
            Err(Error::InvalidMessageId { .. })
        ));
    }
    assert!(matches!(
        e.set_message_id("nope", 3),
        Err(Error::UnknownName { .. })
    ));
    e.set_message_id("pic.png", 41).unwrap();
    e.set_message_id("pic.png", 42).unwrap(); // not started: the last word counts
    e.resume("pic.png", now).unwrap();
    let frames = drain(&mut e, now);
    assert!(!frames.is_empty());
    assert!(
        frames.iter().all(|(_, v)| v["message_id"] == 42),
        "{frames:?}"
    );
    e.set_message_id("pic.png", 42).unwrap();
    assert!(matches!(
        e.set_message_id("pic.png", 43),
        Err(Error::WrongState { .. })
    ));
    // An avatar has no message id to set.
    let mut avatar = spec("me.png");
    avatar.message_id = 0;
    avatar.avatar = true;
    avatar.hold = true;
    e.add_file_hashing(avatar, Box::new(MemorySource::new(vec![1; 10])), now)
        .unwrap();
    assert!(matches!(
        e.set_message_id("me.png", 5),
        Err(Error::InvalidMessageId { .. })
    ));
}

#[test]
fn cancel_drops_queued_chunks_and_later_replies_are_harmless() {
    let mut e = Engine::new(config(WindowPolicy::Fixed(5), ServerStorage::Appending));
    let now = Instant::now();
    e.connected(now);
    e.add_file_hashing(
        spec("a"),
        Box::new(MemorySource::new(pattern(10 * CHUNK as usize, 1))),
        now,
    )
    .unwrap();
    drain(&mut e, now);
    ack(&mut e, now, MsgId(1041), "a", 1);
    assert_eq!(drain(&mut e, now).len(), 5);
    e.cancel("a", now).unwrap();
    assert!(drain(&mut e, now).is_empty());
    ack(&mut e, now, MsgId(1037), "a", 2);
    assert_eq!(e.file_status("a").unwrap().state, FileState::Cancelled);
    assert_eq!(e.in_flight(), 4);
    assert!(matches!(e.resume("a", now), Err(Error::WrongState { .. })));
}

#[test]
fn priorities_share_the_window_and_nobody_starves() {
    let mut s = sim(WindowPolicy::Fixed(8), ServerStorage::Appending);
    s.cfg.bandwidth = Some(10e6);
    let mut names = Vec::new();
    for i in 0..5u8 {
        let mut sp = spec(&format!("f{i}"));
        sp.priority = if i == 4 { 3 } else { 0 };
        s.engine
            .add_file_hashing(
                sp,
                Box::new(MemorySource::new(pattern(64 * CHUNK as usize, i))),
                s.now,
            )
            .unwrap();
        names.push(format!("f{i}"));
    }
    // Halfway through, every file has progressed, the high-priority one most.
    while s.engine.statuses().iter().map(|f| f.acked).sum::<u64>() < 5 * 32 * CHUNK as u64 {
        s.step();
    }
    let acked = |n: &str| s.engine.file_status(n).unwrap().acked;
    for n in &names[..4] {
        assert!(acked(n) > 0, "{n} starved");
        assert!(
            acked("f4") > 2 * acked(n),
            "priority ignored: f4 {} vs {n} {}",
            acked("f4"),
            acked(n)
        );
    }
    s.run(Duration::from_secs(60));
    assert!(names.iter().all(|n| state(&s, n) == FileState::Completed));
}

#[test]
fn queued_files_start_as_active_ones_finish() {
    let mut cfg = config(WindowPolicy::Fixed(5), ServerStorage::Appending);
    cfg.max_active_files = 2;
    let mut s = Sim::new(Engine::new(cfg), SimConfig::default());
    for i in 0..5 {
        add(&mut s, &format!("f{i}"), &pattern(3 * CHUNK as usize, i));
    }
    assert_eq!(
        s.engine
            .statuses()
            .iter()
            .filter(|f| f.state == FileState::Sending)
            .count(),
        2
    );
    s.run(Duration::from_secs(60));
    assert!(s.engine.is_idle());
    assert!(s
        .engine
        .statuses()
        .iter()
        .all(|f| f.state == FileState::Completed));
}

/// Queued files start by priority, then in arrival order; a queued file
/// paused and resumed goes to the back of its priority, a cancelled one
/// never starts; the queue holds exactly the queued files throughout.
#[test]
fn queued_files_start_by_priority_then_arrival() {
    let mut cfg = config(WindowPolicy::Fixed(5), ServerStorage::Positional);
    cfg.max_active_files = 1;
    let mut s = Sim::new(Engine::new(cfg), SimConfig::default());
    for (name, priority) in [("a", 0), ("b", 0), ("c", 2), ("d", 0), ("e", 1)] {
        let mut sp = spec(name);
        sp.priority = priority;
        let source = Box::new(MemorySource::new(pattern(2 * CHUNK as usize, priority)));
        s.engine.add_file_hashing(sp, source, s.now).unwrap();
    }
    let queued = |s: &Sim| {
        s.engine
            .statuses()
            .iter()
            .filter(|f| f.state == FileState::Queued)
            .count()
    };
    assert_eq!((s.engine.scheduler.queued(), queued(&s)), (4, 4));
    s.engine.pause("b", s.now).unwrap();
    s.engine.resume("b", s.now).unwrap();
    s.engine.cancel("d", s.now).unwrap();
    assert_eq!((s.engine.scheduler.queued(), queued(&s)), (3, 3));
    s.run(Duration::from_secs(60));
    let started: Vec<&str> = s
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged {
                name,
                state: FileState::Sending,
            } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["a", "c", "e", "b"]);
    assert_eq!(state(&s, "d"), FileState::Cancelled);
    assert_eq!(s.engine.scheduler.queued(), 0);
}

/// The adaptive window fills a 40 ms / 200 Mbit/s path; today's fixed window
/// of 5 fills under a fifth of it (simulated time, so exact and repeatable).
#[test]
fn adaptive_window_fills_a_40ms_200mbit_path() {
    let run = |window| {
        let mut s = sim(window, ServerStorage::Positional);
        s.cfg.one_way_delay = Duration::from_millis(20);
        s.cfg.bandwidth = Some(25e6);
        let bytes = pattern(64 << 20, 1);
        add(&mut s, "v", &bytes);
        let t = s.run(Duration::from_secs(600));
        assert_eq!(state(&s, "v"), FileState::Completed);
        s.wire_bytes as f64 / t.as_secs_f64() / 25e6
    };
    let adaptive = run(WindowPolicy::adaptive());
    let fixed = run(WindowPolicy::Fixed(5));
    eprintln!(
        "simulated 40 ms / 200 Mbit/s: adaptive {:.1}%, fixed:5 {:.1}% of the link",
        adaptive * 100.0,
        fixed * 100.0
    );
    assert!(
        adaptive >= 0.9,
        "adaptive uses {:.0}% of the link",
        adaptive * 100.0
    );
    assert!(fixed < 0.25, "fixed:5 uses {:.0}%", fixed * 100.0);
    assert!(adaptive / fixed >= 4.0);
}

/// Behind a slow server disk (2 ms per chunk) on a short path, the adaptive
/// window does not pile chunks up: it stays near the few the disk needs.
#[test]
fn adaptive_window_stays_small_behind_a_slow_disk() {
    let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
    s.cfg.one_way_delay = Duration::from_micros(50);
    s.cfg.service_time = Duration::from_millis(2);
    add(&mut s, "v", &pattern(400 * CHUNK as usize, 2));
    s.run(Duration::from_secs(600));
    assert_eq!(state(&s, "v"), FileState::Completed);
    assert!(s.max_in_flight <= 16, "max in flight {}", s.max_in_flight);
}

/// File MB/s (virtual time) of one 32 MiB upload against the deployed
/// server's timing model, with `seed` for its service jitter, and the
/// largest number of chunks in flight.
fn deployed_run(window: WindowPolicy, seed: u64) -> (f64, usize) {
    let storage = ServerStorage::Appending;
    let cfg = SimConfig {
        seed,
        storage,
        ..SimConfig::deployed()
    };
    let mut s = Sim::new(Engine::new(config(window, storage)), cfg);
    let bytes = pattern(32 << 20, seed as u8);
    add(&mut s, "v", &bytes);
    let t = s.run(Duration::from_secs(600));
    assert_eq!(state(&s, "v"), FileState::Completed, "{window}");
    assert_eq!(s.server.append_violations, 0);
    (bytes.len() as f64 / t.as_secs_f64() / 1e6, s.max_in_flight)
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Issue 16: against the deployed server's timing (one worker per
/// connection, service jitter, Nagle on its replies) the adaptive window is
/// as fast as the best fixed window and has no dips. The delay-only
/// controller read the server's queue as congestion, shrank the window, and
/// each shrink left the client silent while replies came in, so Nagle held
/// the next replies for a delayed ACK (40 ms) and the worker ran dry. Once
/// a cut has shown that, the window stops cutting for a while, and does not
/// fill the server's queue (the real server gains nothing from it).
#[test]
fn adaptive_window_matches_the_best_fixed_window_against_the_deployed_timing() {
    let seeds = 1..=3u64;
    let runs = |w: WindowPolicy| -> Vec<(f64, usize)> {
        seeds.clone().map(|s| deployed_run(w, s)).collect()
    };
    let rates = |r: &[(f64, usize)]| -> Vec<f64> { r.iter().map(|x| x.0).collect() };
    let adaptive_runs = runs(WindowPolicy::adaptive());
    let adaptive = rates(&adaptive_runs);
    let fixed: Vec<(u32, Vec<f64>)> = [5, 32, 128, 512]
        .into_iter()
        .map(|n| (n, rates(&runs(WindowPolicy::Fixed(n)))))
        .collect();
    let best = fixed
        .iter()
        .map(|(_, r)| median_of(r.clone()))
        .fold(0.0, f64::max);
    let fixed5 = median_of(fixed[0].1.clone());
    let med = median_of(adaptive.clone());
    let min = adaptive.iter().copied().fold(f64::INFINITY, f64::min);
    let deepest = adaptive_runs.iter().map(|x| x.1).max().unwrap_or(0);
    eprintln!("simulated deployed timing, MB/s per seed: adaptive {adaptive:.1?}, in flight up to {deepest}");
    for (n, r) in &fixed {
        eprintln!("  fixed:{n} {r:.1?}");
    }
    assert!(
        med >= 0.95 * best,
        "adaptive median {med:.1} vs best fixed {best:.1}"
    );
    assert!(
        med >= 0.95 * fixed5,
        "adaptive median {med:.1} vs fixed:5 {fixed5:.1}"
    );
    assert!(
        min >= 0.85 * med,
        "adaptive dips to {min:.1} (median {med:.1})"
    );
    // The server's queue is not filled: a handful of chunks keep its one
    // worker busy, and each queued chunk is memory on the server.
    assert!(deepest <= 64, "adaptive kept up to {deepest} in flight");
}

fn check_invariants(
    sizes: &[usize],
    chunk: u32,
    window: WindowPolicy,
    storage: ServerStorage,
    jitter_ms: u64,
    seed: u64,
    cut_every: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut cfg = config(window, storage);
    cfg.chunk_size = chunk;
    // At most 5 cuts, each of which may restart a file from seq 1 against an
    // appending server: up to 6 sends of a file are legitimate here, each
    // 4/3 of the file on the wire (base64) plus each frame's JSON, under 400
    // bytes: for chunks of a few bytes that JSON is most of the wire.
    cfg.max_resend_factor = (6 * (2 + 400 / chunk as u64)).max(10);
    let mut s = Sim::new(
        Engine::new(cfg),
        SimConfig {
            storage,
            jitter: Duration::from_millis(jitter_ms),
            seed,
            one_way_delay: Duration::from_millis(2),
            // Half the cases with the deployed server's timing: one worker
            // per connection, service jitter, Nagle held replies.
            connection_worker: seed % 2 == 0,
            service_jitter: Duration::from_micros(if seed % 2 == 0 { 400 } else { 0 }),
            delayed_ack: (seed % 2 == 0).then_some(Duration::from_millis(40)),
            ..SimConfig::default()
        },
    );
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| pattern(*n, i as u8))
        .collect();
    for (i, b) in files.iter().enumerate() {
        add(&mut s, &format!("f{i}"), b);
    }
    let mut steps = 0usize;
    let mut cuts = 0;
    let mut connection_start = 0usize;
    while !(s.engine.is_idle()) && steps < 100_000 {
        if !s.step() {
            break;
        }
        steps += 1;
        if let Some(n) = cut_every {
            if steps % n == 0 && cuts < 5 {
                cuts += 1;
                // No seq sent twice on one connection.
                check_no_repeat(&s.server.log[connection_start..])?;
                connection_start = s.server.log.len();
                s.cut();
            }
        }
    }
    check_no_repeat(&s.server.log[connection_start..])?;
    prop_assert_eq!(
        s.window_violations,
        0,
        "in flight above the window at a send"
    );
    for (i, b) in files.iter().enumerate() {
        let name = format!("f{i}");
        let st = s.engine.file_status(&name).unwrap();
        prop_assert_eq!(st.state, FileState::Completed, "{}", name);
        prop_assert_eq!(st.acked_prefix, st.max_seq);
        let stored = s.server.stored(&name, storage).unwrap();
        prop_assert!(stored == *b, "{} differs", name);
        // The first chunk precedes every other chunk of the file on the wire.
        let first = s
            .server
            .log
            .iter()
            .position(|(_, n, _)| *n == name)
            .unwrap();
        prop_assert_eq!(s.server.log[first].2, 1);
    }
    if storage == ServerStorage::Appending {
        prop_assert_eq!(s.server.append_violations, 0);
    }
    let completed = s
        .events
        .iter()
        .filter(|e| matches!(e, Event::Completed { .. }))
        .count();
    prop_assert_eq!(completed, files.len());
    Ok(())
}

fn check_no_repeat(log: &[(MsgId, String, u32)]) -> Result<(), TestCaseError> {
    let mut seen = std::collections::HashSet::new();
    for (_, name, seq) in log {
        prop_assert!(
            seen.insert((name.clone(), *seq)),
            "{} seq {} sent twice on one connection",
            name,
            seq
        );
    }
    Ok(())
}

/// A case the generator found: one-byte chunks, where each frame's JSON is
/// hundreds of times its payload; the test's wire budget must allow for it.
#[test]
fn invariants_hold_with_one_byte_chunks() {
    for storage in [ServerStorage::Appending, ServerStorage::Positional] {
        check_invariants(
            &[13779, 20502],
            1,
            WindowPolicy::Fixed(11),
            storage,
            3,
            7,
            None,
        )
        .unwrap();
    }
}

fn window_strategy() -> impl Strategy<Value = WindowPolicy> {
    prop_oneof![
        (1u32..12).prop_map(WindowPolicy::Fixed),
        Just(WindowPolicy::adaptive()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn invariants_hold_for_random_files_and_reply_timing(
        sizes in proptest::collection::vec(0usize..40_000, 1..6),
        chunk in prop_oneof![Just(1000u32), Just(4096), 1u32..9000],
        window in window_strategy(),
        storage in prop_oneof![Just(ServerStorage::Appending), Just(ServerStorage::Positional)],
        jitter_ms in 0u64..20,
        seed in any::<u64>(),
    ) {
        check_invariants(&sizes, chunk, window, storage, jitter_ms, seed, None)?;
    }

    #[test]
    fn invariants_hold_across_cut_connections(
        sizes in proptest::collection::vec(0usize..60_000, 1..5),
        chunk in 500u32..5000,
        window in window_strategy(),
        storage in prop_oneof![Just(ServerStorage::Appending), Just(ServerStorage::Positional)],
        jitter_ms in 0u64..10,
        seed in any::<u64>(),
        cut_every in 3usize..40,
    ) {
        check_invariants(&sizes, chunk, window, storage, jitter_ms, seed, Some(cut_every))?;
    }
}

#[test]
fn decoded_chunk_frames_carry_the_exact_field_types() {
    let mut e = Engine::new(config(WindowPolicy::Fixed(5), ServerStorage::Appending));
    let now = Instant::now();
    e.connected(now);
    e.add_file_hashing(
        spec("a"),
        Box::new(MemorySource::new(pattern(2 * CHUNK as usize, 1))),
        now,
    )
    .unwrap();
    let mut out = Vec::new();
    e.poll_transmit(now, &mut out).unwrap();
    let (id, body, _) = frame::split_frame(&out, MAX_BODY_LEN).unwrap().unwrap();
    let req = UploadChunkReq::decode(id, body).unwrap();
    assert_eq!(
        (req.uid, req.sender, req.receiver, req.message_id),
        (7, 7, 9, 100)
    );
    assert_eq!(req.token.as_deref(), Some("tok"));
}

#[test]
fn resumed_upload_continues_with_1043_after_the_acknowledged_prefix() {
    let bytes = pattern(10 * CHUNK as usize + 3, 2);
    let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Positional);
    // A previous process uploaded seqs 1..=4 (the server holds them).
    add(&mut s, "v", &bytes[..]);
    while s.engine.file_status("v").unwrap().acked_prefix < 4 {
        s.step();
    }
    let server = std::mem::take(&mut s.server);
    let mut s2 = sim(WindowPolicy::Fixed(5), ServerStorage::Positional);
    s2.server = server;
    let record = AckRecord {
        acked_prefix: 4,
        acked_beyond: vec![],
        in_flight: 0,
    };
    let log_before = s2.server.log.len();
    s2.engine
        .add_resumed_hashing(
            spec("v"),
            Box::new(MemorySource::new(bytes.clone())),
            &record,
            s2.now,
        )
        .unwrap();
    assert_eq!(s2.engine.file_status("v").unwrap().acked, 4 * CHUNK as u64);
    s2.run(Duration::from_secs(60));
    assert_eq!(state(&s2, "v"), FileState::Completed);
    assert_stored(&s2, "v", &bytes);
    assert_eq!(s2.server.log[log_before].0, MsgId(1043));
    assert_eq!(s2.server.log[log_before].2, 5);
}

#[test]
fn a_held_upload_sends_nothing_until_resumed() {
    let mut e = Engine::new(EngineConfig::default());
    let now = Instant::now();
    e.connected(now);
    let mut sp = spec("held");
    sp.hold = true;
    e.add_file_hashing(sp, Box::new(MemorySource::new(pattern(100, 1))), now)
        .unwrap();
    assert_eq!(e.file_status("held").unwrap().state, FileState::Paused);
    assert!(drain(&mut e, now).is_empty());
    e.resume("held", now).unwrap();
    let frames = drain(&mut e, now);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0].0,
        MsgId(1041),
        "a held file starts with 1041, not 1043"
    );
}

mod downloads {
    use super::*;
    use crate::engine::sim::SimMessage;

    fn serve(s: &mut Sim, message_id: i64, name: &str, data: &[u8]) {
        s.server.messages.insert(
            message_id,
            SimMessage {
                name: name.into(),
                sender: 5,
                receiver: 7,
                data: data.to_vec(),
            },
        );
    }

    fn download(s: &mut Sim, name: &str, message_id: i64, md5: Option<String>) -> MemorySink {
        let sink = MemorySink::default();
        let spec = DownloadSpec {
            hold: false,
            name: name.into(),
            message_id,
            uid: 7,
            token: "tok".into(),
            md5,
            priority: 0,
            avatar: None,
            known: None,
        };
        s.engine
            .add_download(spec, Box::new(sink.clone()), s.now)
            .unwrap();
        sink
    }

    fn failure(s: &Sim, name: &str) -> Option<Failure> {
        s.events.iter().find_map(|e| match e {
            Event::Failed { name: n, failure } if n == name => Some(failure.clone()),
            _ => None,
        })
    }

    #[test]
    fn sizes_around_the_chunk_arrive_byte_identical_and_md5_checked() {
        for (i, len) in [0usize, 1, 32_767, 32_768, 32_769, 10 * 32_768 + 5]
            .into_iter()
            .enumerate()
        {
            let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
            let data = pattern(len, i as u8);
            serve(&mut s, 40 + i as i64, "pic.png", &data);
            let sink = download(&mut s, "d", 40 + i as i64, Some(md5_of(&data)));
            s.run(Duration::from_secs(60));
            assert_eq!(
                state(&s, "d"),
                FileState::Completed,
                "len {len}: {:?}",
                failure(&s, "d")
            );
            let got = sink.0.lock().unwrap();
            assert!(got.1 && got.0 == data, "len {len}");
            if len == 0 {
                assert!(s.server.down_log.is_empty(), "a 0-byte file needs no 1047");
            }
        }
    }

    /// Pipelined requests fill the window; one request per reply (the
    /// deployed client) pays a round trip per chunk.
    #[test]
    fn pipelined_download_beats_stop_and_wait_by_far() {
        let run = |window| {
            let mut s = sim(window, ServerStorage::Positional);
            s.cfg.one_way_delay = Duration::from_millis(20);
            s.cfg.bandwidth = Some(25e6);
            serve(&mut s, 1, "video.mp4", &pattern(8 << 20, 3));
            download(&mut s, "d", 1, None);
            let t = s.run(Duration::from_secs(600));
            assert_eq!(state(&s, "d"), FileState::Completed);
            t.as_secs_f64()
        };
        let pipelined = run(WindowPolicy::adaptive());
        let stop_and_wait = run(WindowPolicy::Fixed(1));
        eprintln!("simulated download of 8 MiB: pipelined {pipelined:.2} s, one request per reply {stop_and_wait:.2} s");
        assert!(
            stop_and_wait / pipelined >= 5.0,
            "{stop_and_wait:.2}s vs {pipelined:.2}s"
        );
    }

    #[test]
    fn unknown_message_id_times_out_with_a_clear_error() {
        let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
        download(&mut s, "d", 999, None);
        s.run(Duration::from_secs(60));
        let f = failure(&s, "d").expect("fails");
        assert!(f.to_string().contains("1045"), "{f}");
        assert!(!s
            .events
            .iter()
            .any(|e| matches!(e, Event::ConnectionStalled { .. })));
    }

    #[test]
    fn hostile_names_are_refused_before_anything_is_written() {
        for bad in ["../../etc/passwd", "/etc/passwd", "a\\\\b", ""] {
            let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
            serve(&mut s, 1, "ok.png", &pattern(1000, 1));
            let bad_name = bad.to_string();
            s.server.info_rule = Some(Box::new(move |r| r.name = Some(bad_name.clone())));
            let sink = download(&mut s, "d", 1, None);
            s.run(Duration::from_secs(60));
            assert!(
                matches!(failure(&s, "d"), Some(Failure::BadReply { .. })),
                "{bad:?}"
            );
            assert!(s.server.down_log.is_empty());
            assert!(sink.0.lock().unwrap().0.is_empty());
        }
    }

    #[test]
    fn bad_chunk_replies_fail_the_download() {
        type Rule = Box<dyn FnMut(&mut DownChunkRsp)>;
        let rules: Vec<(&str, Rule)> = vec![
            (
                "error 0 without data",
                Box::new(|r| {
                    r.data = None;
                    r.seq = None;
                }),
            ),
            ("wrong seq", Box::new(|r| r.seq = r.seq.map(|s| s + 1))),
            ("bad base64", Box::new(|r| r.data = Some("@@@@".into()))),
            (
                "oversized",
                Box::new(|r| {
                    r.data = Some(base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        vec![0u8; 40_000],
                    ))
                }),
            ),
            ("short", Box::new(|r| r.data = Some("AAAA".into()))),
        ];
        for (what, rule) in rules {
            let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
            serve(&mut s, 1, "v.bin", &pattern(5 * 32_768, 1));
            s.server.chunk_rule = Some(rule);
            let sink = download(&mut s, "d", 1, None);
            s.run(Duration::from_secs(60));
            assert!(failure(&s, "d").is_some(), "{what}: {:?}", s.events);
            assert!(!sink.0.lock().unwrap().1, "{what}: must not finish");
        }
    }

    #[test]
    fn md5_mismatch_fails_and_removes_the_partial_file() {
        let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Positional);
        serve(&mut s, 1, "v.bin", &pattern(100_000, 1));
        let sink = download(&mut s, "d", 1, Some("0".repeat(32)));
        s.run(Duration::from_secs(60));
        assert!(failure(&s, "d").unwrap().to_string().contains("md5"));
        let g = sink.0.lock().unwrap();
        assert!(!g.1 && g.0.is_empty(), "aborted and cleared");
    }

    /// A 41-chunk download with its first 5 chunks received.
    fn five_chunks_in() -> (Sim, Vec<u8>, MemorySink) {
        let mut s = sim(WindowPolicy::Fixed(8), ServerStorage::Positional);
        let data = pattern(40 * 32_768 + 11, 4);
        serve(&mut s, 1, "v.bin", &data);
        let sink = download(&mut s, "d", 1, Some(md5_of(&data)));
        while s.engine.file_status("d").unwrap().acked_prefix < 5 {
            s.step();
        }
        (s, data, sink)
    }

    /// Runs the download to its end, checks it is byte-identical, and
    /// returns the seqs the server was asked for from `s.server.down_log[from..]`.
    fn complete_and_asked(s: &mut Sim, from: usize, data: &[u8], sink: &MemorySink) -> Vec<u32> {
        s.run(Duration::from_secs(60));
        assert_eq!(state(s, "d"), FileState::Completed, "{:?}", failure(s, "d"));
        assert!(sink.0.lock().unwrap().0 == data);
        s.server.down_log[from..].iter().map(|(_, q)| *q).collect()
    }

    /// A cut with requests in flight: the server's expected seq ran ahead of
    /// what arrived, so the probe after the reconnect fails, and the download
    /// starts again from seq 1 (once) and completes byte-identical.
    #[test]
    fn a_cut_with_requests_in_flight_restarts_from_seq_1_and_completes() {
        let (mut s, data, sink) = five_chunks_in();
        let status = s.engine.file_status("d").unwrap();
        assert!(status.in_flight > 0, "{status:?}");
        let received = status.acked_prefix;
        s.cut();
        let logged = s.server.down_log.len();
        let after = complete_and_asked(&mut s, logged, &data, &sink);
        assert_eq!(s.engine.stats().restarts, 1);
        assert_eq!(
            after[0],
            received + 1,
            "the probe asks for the first missing chunk"
        );
        assert_eq!(after[1], 1, "then the download starts again from seq 1");
        assert_eq!(
            after[1..],
            (1..=41).collect::<Vec<u32>>()[..],
            "each chunk once after that"
        );
    }

    /// A cut with nothing in flight (paused and drained): the server's
    /// expected seq is ours, so the download resumes exactly, with no restart.
    #[test]
    fn a_cut_with_nothing_in_flight_resumes_exactly() {
        let (mut s, data, sink) = five_chunks_in();
        s.engine.pause("d", s.now).unwrap();
        while s.engine.file_status("d").unwrap().in_flight > 0 {
            s.step();
        }
        let received = s.engine.file_status("d").unwrap().acked_prefix;
        s.cut();
        s.engine.resume("d", s.now).unwrap();
        let logged = s.server.down_log.len();
        let after = complete_and_asked(&mut s, logged, &data, &sink);
        assert_eq!(s.engine.stats().restarts, 0);
        assert_eq!(
            after,
            (received + 1..=41).collect::<Vec<u32>>(),
            "each missing chunk once"
        );
    }

    #[test]
    fn uploads_and_downloads_share_one_window() {
        let mut s = sim(WindowPolicy::Fixed(6), ServerStorage::Positional);
        let data = pattern(20 * 32_768, 9);
        serve(&mut s, 1, "in.bin", &data);
        let up = pattern(20 * 32_768, 8);
        add(&mut s, "out.bin", &up);
        let sink = download(&mut s, "d", 1, None);
        s.run(Duration::from_secs(60));
        assert_eq!(state(&s, "out.bin"), FileState::Completed);
        assert_eq!(state(&s, "d"), FileState::Completed);
        assert!(sink.0.lock().unwrap().0 == data);
        assert_stored(&s, "out.bin", &up);
        assert!(s.max_in_flight <= 6);
        assert_eq!(s.window_violations, 0);
    }
}

mod avatars {
    use super::*;

    #[test]
    fn avatar_upload_is_stop_and_wait_with_int_sizes_and_the_token_on_seq_1() {
        let mut e = Engine::new(config(WindowPolicy::Fixed(8), ServerStorage::Appending));
        let now = Instant::now();
        e.connected(now);
        let mut sp = spec("head.png");
        sp.avatar = true;
        e.add_file_hashing(
            sp,
            Box::new(MemorySource::new(pattern(3 * CHUNK as usize - 9, 1))),
            now,
        )
        .unwrap();
        for seq in 1..=3u32 {
            let frames = drain(&mut e, now);
            assert_eq!(frames.len(), 1, "stop-and-wait: one chunk at a time");
            let (id, v) = &frames[0];
            assert_eq!((*id, v["seq"].as_u64()), (MsgId(1031), Some(seq as u64)));
            assert!(v["total_size"].is_u64() && v["trans_size"].is_u64(), "ints");
            assert_eq!(v.get("token").is_some(), seq == 1);
            assert!(v.get("message_id").is_none() && v.get("sender").is_none());
            ack(&mut e, now, MsgId(1031), "head.png", seq);
        }
        assert_eq!(
            e.file_status("head.png").unwrap().state,
            FileState::Completed
        );
    }

    #[test]
    fn avatar_round_trip_through_the_simulated_server() {
        let mut s = sim(WindowPolicy::adaptive(), ServerStorage::Appending);
        let bytes = pattern(5 * CHUNK as usize + 100, 3);
        let mut sp = spec("me.png");
        sp.avatar = true;
        s.engine
            .add_file_hashing(sp, Box::new(MemorySource::new(bytes.clone())), s.now)
            .unwrap();
        s.run(Duration::from_secs(60));
        assert_eq!(
            state(&s, "me.png"),
            FileState::Completed,
            "{:?} {:?} {:?}",
            s.engine.file_status("me.png"),
            s.server.log,
            s.events
        );
        assert!(s.server.log.iter().all(|(id, _, _)| *id == MsgId(1031)));
        assert_eq!(s.max_in_flight, 1);
        let sink = MemorySink::default();
        let spec = DownloadSpec {
            hold: false,
            name: "avatar-me".into(),
            message_id: 0,
            uid: 7,
            token: "tok".into(),
            md5: Some(md5_of(&bytes)),
            priority: 0,
            avatar: Some(AvatarRef {
                name: "me.png".into(),
                client_path: "/home/u/avatar.png".into(),
                req_type: "1".into(),
            }),
            known: None,
        };
        s.engine
            .add_download(spec, Box::new(sink.clone()), s.now)
            .unwrap();
        s.run(Duration::from_secs(60));
        assert_eq!(
            state(&s, "avatar-me"),
            FileState::Completed,
            "{:?}",
            s.events
        );
        assert!(sink.0.lock().unwrap().0 == bytes);
    }
}

/// Scripted stories with the `Pair`: the protocol's order of events, told
/// by hand.
mod stories {
    use super::*;

    /// Two files; the deployed server answers one chunk with an anonymous
    /// error, then acknowledges a later chunk of the same file: the error can
    /// only be that file's, which fails alone; the other completes.
    #[test]
    fn an_anonymous_error_is_attributed_by_elimination() {
        let mut p = Pair::new(config(WindowPolicy::Fixed(4), ServerStorage::Appending));
        p.upload(spec_without_token("a"), pattern(4 * CHUNK as usize, 1));
        p.upload(spec_without_token("b"), pattern(4 * CHUNK as usize, 2));
        for first in p.client_sends() {
            p.server_acks(&first);
        }
        let burst = p.client_sends();
        let names: Vec<_> = burst
            .iter()
            .map(|s| (s.chunk().name.to_string(), s.chunk().seq))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let a2 = burst
            .iter()
            .find(|s| s.chunk().name == "a" && s.chunk().seq == 2)
            .unwrap();
        let a3 = burst
            .iter()
            .find(|s| s.chunk().name == "a" && s.chunk().seq == 3)
            .unwrap();
        p.server_errs(a2, ErrorCode::FileWritePermissionFailed);
        assert_eq!(p.state("a"), FileState::Sending, "not attributable yet");
        assert!(
            p.client_sends().iter().all(|s| s.chunk().last == 0),
            "no candidate sends its last chunk while the error is unattributed"
        );
        p.server_acks(a3); // replies per name are ordered: a2 was the error
        assert_eq!(p.state("a"), FileState::Failed);
        assert!(p.events().contains(&Event::Failed {
            name: "a".into(),
            failure: Failure::Server {
                code: ErrorCode::FileWritePermissionFailed,
                seq: 2
            }
        }));
        for _ in 0..4 {
            for s in p.client_sends() {
                if s.chunk().name == "b" {
                    p.server_acks(&s);
                }
            }
            for s in burst.iter().filter(|s| s.chunk().name == "b") {
                p.server_acks(s);
            }
        }
        assert_eq!(p.state("b"), FileState::Completed);
    }

    /// A download asks 1045 by message id; the deployed server answers
    /// nothing for an unknown id, so it fails alone after the info timeout.
    /// Another, told its size, pipelines 1047s in order with the token; after
    /// a cut it probes with one request from the first missing chunk.
    #[test]
    fn downloads_ask_info_pipeline_in_order_and_probe_after_a_cut() {
        let mut p = Pair::new(config(WindowPolicy::Fixed(4), ServerStorage::Appending));
        let mut unknown = DownloadSpec::new("lost", 404);
        unknown.token = "tok".into();
        p.engine
            .add_download(unknown, Box::new(MemorySink::default()), p.now)
            .unwrap();
        let mut spec = DownloadSpec::new("d", 5);
        spec.token = "tok".into();
        let sink = MemorySink::default();
        p.engine
            .add_download(spec, Box::new(sink.clone()), p.now)
            .unwrap();
        let asks = p.client_sends();
        let ids: Vec<i64> = asks.iter().map(|s| s.down_info().message_id).collect();
        assert_eq!(ids, vec![404, 5]);
        let info = serde_json::json!({"error": 0, "message_id": 5, "name": "x.bin",
            "total_size": (6 * 32_768).to_string(), "sender_id": 1, "recv_id": 2});
        let body = serde_json::to_vec(&info).unwrap();
        p.engine.handle_frame(p.now, MsgId(1046), &body);
        let chunks = p.client_sends();
        let seqs: Vec<u32> = chunks.iter().map(|s| s.down_chunk().seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "pipelined in order, up to the window");
        assert!(chunks
            .iter()
            .all(|s| s.has("token") && s.down_chunk().name == "x.bin"));
        p.advance(p.engine.config().info_timeout);
        assert_eq!(p.state("lost"), FileState::Failed);
        assert_eq!(
            p.state("d"),
            FileState::Sending,
            "the other download is untouched"
        );
        // Chunk 1 arrives, then the link is cut with 2 and 3 in flight.
        let data =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32_768]);
        let rsp = serde_json::json!({"error": 0, "name": "x.bin", "seq": 1, "data": data,
            "total_size": (6 * 32_768).to_string()});
        p.engine
            .handle_frame(p.now, MsgId(1048), &serde_json::to_vec(&rsp).unwrap());
        p.cut();
        p.reconnect();
        let probe = p.client_sends();
        let seqs: Vec<u32> = probe.iter().map(|s| s.down_chunk().seq).collect();
        assert_eq!(seqs, vec![2], "one probe from the first missing chunk");
    }
}

mod restarts {
    use super::*;

    fn chunk_reply(seq: u32, data: &[u8], total: usize) -> Vec<u8> {
        let data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data);
        let rsp = serde_json::json!({"error": 0, "name": "x.bin", "seq": seq, "data": data,
            "total_size": total.to_string()});
        serde_json::to_vec(&rsp).unwrap()
    }

    fn refused() -> Vec<u8> {
        br#"{"error":0,"name":"x.bin"}"#.to_vec()
    }

    /// A download told its size, with chunks 1..=4 in flight.
    fn receiving(total: usize) -> (Pair, MemorySink) {
        let mut p = Pair::new(config(WindowPolicy::Fixed(4), ServerStorage::Appending));
        let sink = MemorySink::default();
        p.engine
            .add_download(DownloadSpec::new("d", 5), Box::new(sink.clone()), p.now)
            .unwrap();
        p.client_sends();
        let info = serde_json::json!({"error": 0, "message_id": 5, "name": "x.bin",
            "total_size": total.to_string()});
        p.engine
            .handle_frame(p.now, MsgId(1046), &serde_json::to_vec(&info).unwrap());
        let sent: Vec<u32> = p
            .client_sends()
            .iter()
            .map(|s| s.down_chunk().seq)
            .collect();
        assert_eq!(sent, vec![1, 2, 3, 4]);
        (p, sink)
    }

    /// The server's one expected seq per name moved under the stream (a dead
    /// connection's late requests): chunk 2 is refused. The rest of the
    /// stream drains and is ignored, then the download starts again from
    /// seq 1 and completes byte-identical.
    #[test]
    fn a_refused_chunk_mid_stream_drains_the_stream_then_restarts_from_seq_1() {
        let data = pattern(6 * 32_768, 3);
        let (mut p, sink) = receiving(data.len());
        let chunk = |s: u32| &data[(s as usize - 1) * 32_768..s as usize * 32_768];
        p.engine
            .handle_frame(p.now, MsgId(1048), &chunk_reply(1, chunk(1), data.len()));
        p.engine.handle_frame(p.now, MsgId(1048), &refused());
        assert!(p.client_sends().is_empty(), "3 and 4 still in flight: wait");
        // Their replies belong to the abandoned stream, data or not.
        p.engine
            .handle_frame(p.now, MsgId(1048), &chunk_reply(3, chunk(3), data.len()));
        p.engine.handle_frame(p.now, MsgId(1048), &refused());
        assert_eq!(p.engine.stats().stale_replies, 2);
        let mut next: Vec<u32> = p
            .client_sends()
            .iter()
            .map(|s| s.down_chunk().seq)
            .collect();
        assert_eq!(next, vec![1, 2, 3, 4], "from seq 1 again");
        for seq in 1..=6u32 {
            p.engine.handle_frame(
                p.now,
                MsgId(1048),
                &chunk_reply(seq, chunk(seq), data.len()),
            );
            next.extend(p.client_sends().iter().map(|s| s.down_chunk().seq));
        }
        assert_eq!(p.state("d"), FileState::Completed);
        assert!(sink.0.lock().unwrap().0 == data);
        assert_eq!((next.len(), p.engine.stats().restarts), (6, 1));
    }

    /// A server that refuses every chunk: a bounded number of restarts, then
    /// a clear failure.
    #[test]
    fn a_server_that_keeps_refusing_fails_the_download_after_three_restarts() {
        let (mut p, _sink) = receiving(6 * 32_768);
        let mut rounds = 0;
        while p.state("d") == FileState::Sending {
            let in_flight = p.engine.file_status("d").unwrap().in_flight;
            for _ in 0..in_flight {
                p.engine.handle_frame(p.now, MsgId(1048), &refused());
            }
            p.client_sends();
            rounds += 1;
            assert!(rounds < 10, "it must give up");
        }
        assert_eq!(p.state("d"), FileState::Failed);
        assert_eq!(p.engine.stats().restarts, 3);
        let failed = p.events().into_iter().any(|e| {
            matches!(e, Event::Failed { failure, .. } if failure.to_string().contains("reply without data"))
        });
        assert!(failed);
    }
}

/// A server that announces a 1 TB file: the download fails before its sink
/// is opened (nothing is written), with the limit named.
#[test]
fn a_download_larger_than_the_limit_fails_before_writing() {
    let mut p = Pair::new(EngineConfig::default());
    let sink = MemorySink::default();
    p.engine
        .add_download(DownloadSpec::new("d", 5), Box::new(sink.clone()), p.now)
        .unwrap();
    p.client_sends();
    let info = serde_json::json!({"error": 0, "message_id": 5, "name": "x.bin",
        "total_size": (1u64 << 40).to_string()});
    p.engine
        .handle_frame(p.now, MsgId(1046), &serde_json::to_vec(&info).unwrap());
    assert_eq!(p.state("d"), FileState::Failed);
    assert!(p.client_sends().is_empty(), "no chunk is asked for");
    let reason = p.events().into_iter().find_map(|e| match e {
        Event::Failed { failure, .. } => Some(failure.to_string()),
        _ => None,
    });
    assert!(reason.unwrap().contains("max_download_size"));
    assert!(
        sink.0.lock().unwrap().0.is_empty(),
        "the sink was never opened"
    );
}

/// Give-up budgets: no upload is re-sent without bound, and no transfer
/// waits forever without progress.
mod budgets {
    use super::*;

    /// A server that acknowledges seq 1 and then loses the connection every
    /// time: against an appending server each cut restarts from seq 1, so
    /// without a bound the client would send forever.
    #[test]
    fn an_upload_never_sends_more_than_its_resend_bound() {
        let mut p = Pair::new(config(WindowPolicy::Fixed(8), ServerStorage::Appending));
        let size = 4 * CHUNK as u64;
        p.upload(spec_without_token("v"), pattern(size as usize, 1));
        let mut sent = 0u64;
        for _ in 0..20 {
            let raw = |s: &pair::Sent| {
                let data = s.chunk().data.to_string();
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
                    .unwrap()
                    .len() as u64
            };
            let first = p.client_sends();
            sent += first.iter().map(raw).sum::<u64>();
            if let Some(f) = first.first() {
                p.server_acks(f);
            }
            sent += p.client_sends().iter().map(raw).sum::<u64>();
            p.cut();
            p.reconnect();
            if p.state("v") == FileState::Failed {
                break;
            }
        }
        assert_eq!(p.state("v"), FileState::Failed);
        assert!(sent <= 3 * size + CHUNK as u64, "sent {sent} for {size}");
        let reason = p.events().into_iter().find_map(|e| match e {
            Event::Failed { failure, .. } => Some(failure),
            _ => None,
        });
        let reason = reason.unwrap();
        assert_eq!(reason.code(), CODE_GAVE_UP);
        assert!(reason.to_string().contains("max_resend_factor"), "{reason}");
    }

    /// A silent server: after the ack timeout the connection is reported
    /// stalled; after `give_up_after` without progress the upload fails,
    /// naming the budget. A paused transfer does not count down.
    #[test]
    fn no_progress_for_the_budget_fails_the_transfer_but_not_a_paused_one() {
        let mut c = config(WindowPolicy::Fixed(8), ServerStorage::Positional);
        c.give_up_after = Some(Duration::from_secs(60));
        let mut p = Pair::new(c);
        p.upload(spec("a"), pattern(3 * CHUNK as usize, 1));
        let mut held = spec("b");
        held.hold = true;
        p.upload(held, pattern(3 * CHUNK as usize, 2));
        assert_eq!(p.client_sends().len(), 1);
        p.advance(Duration::from_secs(31));
        assert_eq!(p.state("a"), FileState::Sending, "stalled, not given up");
        let deadline = p.engine.poll_timeout().expect("the budget is a timer");
        assert!(deadline <= p.now + Duration::from_secs(30));
        p.advance(Duration::from_secs(30));
        assert_eq!(p.state("a"), FileState::Failed);
        assert_eq!(p.state("b"), FileState::Paused, "a held transfer waits");
        let failed = p.events().into_iter().find_map(|e| match e {
            Event::Failed { failure, .. } => Some(failure.to_string()),
            _ => None,
        });
        assert!(failed.unwrap().contains("give_up_after"));
    }
}

/// Size probes against an appending server (issue 12): after a cut, an
/// upload with a token asks the stored size (1047 seq 1 for its own name)
/// and continues after exactly what the server holds; at the end one probe
/// verifies the stored size.
mod probes {
    use super::*;
    use crate::protocol::messages::StrU64;

    const SETTLE: Duration = Duration::from_millis(500);

    /// The deployed server's answer to a probe: the stored size and the
    /// stored file's first chunk.
    fn answer(name: &str, total: u64, stored: &[u8]) -> Vec<u8> {
        let first = &stored[..stored.len().min(DOWNLOAD_CHUNK as usize)];
        let rsp = DownChunkRsp {
            error: ErrorCode::Success,
            data: Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                first,
            )),
            seq: Some(1),
            total_size: Some(StrU64(total)),
            current_size: Some(StrU64(first.len() as u64)),
            is_last: Some(first.len() as u64 == total),
            name: Some(name.into()),
            sender_id: Some(7),
            receiver_id: Some(9),
        };
        serde_json::to_vec(&rsp).unwrap()
    }

    fn reply(p: &mut Pair, body: &[u8]) {
        p.engine.handle_frame(p.now, MsgId::IMG_CHAT_DOWN_RSP, body);
    }

    /// An upload of `chunks` chunks with seq 1..=acked acknowledged and
    /// 1..=sent sent, then a cut and a reconnect.
    fn cut_with_in_flight(chunks: usize, acked: u32, token: bool) -> (Pair, Vec<u8>) {
        let mut p = Pair::new(config(WindowPolicy::Fixed(8), ServerStorage::Appending));
        let bytes = pattern(chunks * CHUNK as usize + 100, 3);
        let spec = if token {
            spec("v")
        } else {
            spec_without_token("v")
        };
        p.upload(spec, bytes.clone());
        let first = p.client_sends();
        p.server_acks(&first[0]);
        let burst = p.client_sends();
        assert_eq!(burst.len(), 8);
        for s in burst.iter().take(acked as usize - 1) {
            p.server_acks(s);
        }
        p.cut();
        p.reconnect();
        (p, bytes)
    }

    /// The probe goes after the settle delay, as a 1047 seq 1 for the
    /// upload's own name with the uploader's uid as owner and its token;
    /// two probes that agree on 5 whole chunks continue with 1043 seq 6.
    #[test]
    fn a_stable_size_of_whole_chunks_continues_after_them() {
        let (mut p, bytes) = cut_with_in_flight(20, 3, true);
        assert!(
            p.client_sends().is_empty(),
            "nothing before the settle delay"
        );
        assert!(p.engine.poll_timeout().is_some_and(|t| t <= p.now + SETTLE));
        p.advance(SETTLE - Duration::from_millis(1));
        assert!(
            p.client_sends().is_empty(),
            "nothing before the settle delay"
        );
        p.advance(Duration::from_millis(1));
        let probe = p.client_sends();
        assert_eq!(probe.len(), 1);
        let req = probe[0].down_chunk();
        assert_eq!(probe[0].id, MsgId::IMG_CHAT_DOWN_REQ);
        assert_eq!(
            (
                req.name.as_str(),
                req.seq,
                req.token.as_str(),
                req.uid,
                req.sender_id
            ),
            ("v", 1, "tok", 7, 7)
        );
        let stored = 5 * CHUNK as u64;
        reply(&mut p, &answer("v", stored, &bytes));
        assert!(p.client_sends().is_empty(), "9 sent, 5 held: probe again");
        p.advance(SETTLE);
        assert_eq!(p.client_sends().len(), 1);
        reply(&mut p, &answer("v", stored, &bytes));
        let next = p.client_sends();
        let seqs: Vec<(MsgId, u32)> = next.iter().map(|s| (s.id, s.chunk().seq)).collect();
        assert_eq!(seqs[0], (MsgId(1043), 6), "{seqs:?}");
        assert!(seqs[1..].iter().all(|(id, _)| *id == MsgId(1037)));
        let st = p.engine.stats();
        assert_eq!((st.probes, st.probe_resumes, st.restarts), (2, 1, 0));
        assert_eq!(p.engine.file_status("v").unwrap().acked, stored);
    }

    /// Every chunk sent is stored: nothing more can arrive, one probe does.
    #[test]
    fn everything_sent_stored_needs_one_probe() {
        let (mut p, bytes) = cut_with_in_flight(20, 3, true);
        p.advance(SETTLE);
        assert_eq!(p.client_sends().len(), 1);
        reply(&mut p, &answer("v", 9 * CHUNK as u64, &bytes));
        let next = p.client_sends();
        assert_eq!((next[0].id, next[0].chunk().seq), (MsgId(1043), 10));
    }

    /// Answers that show nothing usable, or that a hostile server makes up:
    /// the upload starts again from seq 1 (1041), never panics, never
    /// continues from a made-up size.
    #[test]
    fn unusable_or_hostile_answers_restart_from_seq_1() {
        let other = pattern(CHUNK as usize, 99);
        type Answer = Box<dyn Fn(&[u8]) -> Vec<u8>>;
        let cases: Vec<(&str, Answer)> = vec![
            (
                "not whole chunks",
                Box::new(|b| answer("v", 5 * CHUNK as u64 + 1, b)),
            ),
            (
                "more than sent",
                Box::new(|b| answer("v", 12 * CHUNK as u64, b)),
            ),
            (
                "fewer than acknowledged",
                Box::new(|b| answer("v", 2 * CHUNK as u64, b)),
            ),
            ("beyond u64 sense", Box::new(|b| answer("v", u64::MAX, b))),
            (
                "another file's bytes",
                Box::new(move |_| answer("v", 5 * CHUNK as u64, &other)),
            ),
            ("token refused", Box::new(|_| br#"{"error":1010}"#.to_vec())),
            (
                "no data (missing or empty)",
                Box::new(|_| br#"{"error":0,"name":"v"}"#.to_vec()),
            ),
            (
                "wrong seq",
                Box::new(|b| {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&answer("v", 5 * CHUNK as u64, b)).unwrap();
                    v["seq"] = 3.into();
                    serde_json::to_vec(&v).unwrap()
                }),
            ),
            (
                "short data",
                Box::new(|b| answer("v", 5 * CHUNK as u64, &b[..100])),
            ),
            (
                "bad base64",
                Box::new(|_| {
                    br#"{"error":0,"name":"v","seq":1,"data":"@@","total_size":"163840"}"#.to_vec()
                }),
            ),
        ];
        for (what, make) in cases {
            let (mut p, bytes) = cut_with_in_flight(20, 3, true);
            p.advance(SETTLE);
            assert_eq!(p.client_sends().len(), 1, "{what}");
            reply(&mut p, &make(&bytes));
            let next = p.client_sends();
            assert_eq!(
                next.iter().map(|s| (s.id, s.chunk().seq)).next(),
                Some((MsgId(1041), 1)),
                "{what}"
            );
            assert_eq!(p.engine.stats().restarts, 1, "{what}");
            assert_eq!(p.state("v"), FileState::Sending, "{what}");
        }
    }

    /// A size that keeps changing is not trusted for ever.
    #[test]
    fn a_size_that_keeps_changing_restarts_from_seq_1() {
        let (mut p, bytes) = cut_with_in_flight(20, 3, true);
        for k in 3..8u64 {
            p.advance(SETTLE);
            assert_eq!(p.client_sends().len(), 1, "probe for {k}");
            reply(&mut p, &answer("v", k * CHUNK as u64, &bytes));
        }
        let next = p.client_sends();
        assert_eq!((next[0].id, next[0].chunk().seq), (MsgId(1041), 1));
    }

    /// Without a token the cut restarts from seq 1 at once, with no probe
    /// and no settle delay: exactly as before.
    #[test]
    fn without_a_token_nothing_is_probed() {
        let (mut p, _) = cut_with_in_flight(20, 3, false);
        let next = p.client_sends();
        assert_eq!((next[0].id, next[0].chunk().seq), (MsgId(1041), 1));
        assert_eq!(p.engine.stats().probes, 0);
    }

    /// The final probe: exactly the file's size completes the upload; any
    /// other size fails it loudly; with `verify` off it completes at once.
    #[test]
    fn the_last_ack_is_verified_by_one_probe() {
        for (stored_extra, verify) in [(0u64, true), (CHUNK as u64, true), (0, false)] {
            let mut cfg = config(WindowPolicy::Fixed(8), ServerStorage::Appending);
            cfg.probe.verify = verify;
            let mut p = Pair::new(cfg);
            let bytes = pattern(3 * CHUNK as usize + 7, 5);
            p.upload(spec("v"), bytes.clone());
            for _ in 0..2 {
                for s in p.client_sends() {
                    p.server_acks(&s);
                }
            }
            if !verify {
                assert_eq!(p.state("v"), FileState::Completed);
                assert_eq!(p.engine.stats().probes, 0);
                continue;
            }
            assert_eq!(p.state("v"), FileState::Sending, "not before the probe");
            let probe = p.client_sends();
            assert_eq!(probe.len(), 1);
            assert_eq!(probe[0].id, MsgId::IMG_CHAT_DOWN_REQ);
            let size = bytes.len() as u64 + stored_extra;
            reply(&mut p, &answer("v", size, &bytes));
            let failed = p.events().into_iter().find_map(|e| match e {
                Event::Failed { failure, .. } => Some(failure),
                _ => None,
            });
            if stored_extra == 0 {
                assert_eq!(p.state("v"), FileState::Completed);
                assert_eq!(failed, None);
            } else {
                assert_eq!(p.state("v"), FileState::Failed);
                let failure = failed.expect("a Failed event");
                assert_eq!(failure.code(), CODE_BAD_REPLY);
                let text = failure.to_string();
                assert!(text.contains(&format!("holds {size} bytes")), "{text}");
            }
        }
    }

    /// A download whose server name is an unfinished upload's that may probe
    /// refuses to start (the probes would reset its per-name state); an
    /// upload whose name a download is using restarts instead of probing.
    #[test]
    fn probes_and_downloads_of_one_name_never_overlap() {
        let info = |name: &str| {
            serde_json::to_vec(&serde_json::json!({"error": 0, "message_id": 5,
                "sender_id": 7, "recv_id": 9, "name": name, "total_size": "200000"}))
            .unwrap()
        };
        // The upload first: the download is refused at its 1046.
        let mut p = Pair::new(config(WindowPolicy::Fixed(8), ServerStorage::Appending));
        p.upload(spec("v"), pattern(4 * CHUNK as usize, 1));
        p.engine
            .add_download(
                DownloadSpec::new("dl", 5),
                Box::new(MemorySink::default()),
                p.now,
            )
            .unwrap();
        p.client_sends();
        p.engine
            .handle_frame(p.now, MsgId::IMG_CHAT_DOWN_INFO_SYNC_RSP, &info("v"));
        assert_eq!(p.state("dl"), FileState::Failed);
        let why = p.events().into_iter().find_map(|e| match e {
            Event::Failed { name, failure } if name == "dl" => Some(failure.to_string()),
            _ => None,
        });
        assert!(why.unwrap().contains("being uploaded by this client"));

        // The download first: after a cut the upload restarts, unprobed.
        let mut p = Pair::new(config(WindowPolicy::Fixed(8), ServerStorage::Appending));
        p.engine
            .add_download(
                DownloadSpec::new("dl", 5),
                Box::new(MemorySink::default()),
                p.now,
            )
            .unwrap();
        p.client_sends();
        p.engine
            .handle_frame(p.now, MsgId::IMG_CHAT_DOWN_INFO_SYNC_RSP, &info("v"));
        p.upload(spec("v"), pattern(4 * CHUNK as usize, 1));
        let sent = p.client_sends();
        let first = sent.iter().find(|s| s.id == MsgId(1041)).unwrap().clone();
        p.server_acks(&first);
        p.client_sends();
        p.cut();
        p.reconnect();
        p.advance(SETTLE);
        let after = p.client_sends();
        assert!(after.iter().any(|s| s.id == MsgId(1041)));
        assert_eq!(
            p.engine.stats().probes,
            0,
            "no probe of a name being downloaded"
        );
        assert_eq!(p.engine.stats().restarts, 1);
    }

    fn run_cut_every(link: &SimConfig, token: bool, every: u64, cuts: u32) -> (Sim, Vec<u8>) {
        let mut s = Sim::new(
            Engine::new(config(WindowPolicy::adaptive(), ServerStorage::Appending)),
            link.clone(),
        );
        let bytes = pattern(24 << 20, 12);
        let spec = if token {
            spec("big")
        } else {
            spec_without_token("big")
        };
        s.engine
            .add_file_hashing(spec, Box::new(MemorySource::new(bytes.clone())), s.now)
            .unwrap();
        let mut done = 0;
        let mut mark = 0;
        while done < cuts {
            assert!(s.step(), "the sim stopped before cut {done}");
            if s.engine.stats().acks >= mark + every {
                s.cut();
                done += 1;
                mark = s.engine.stats().acks;
            }
        }
        s.run(Duration::from_secs(600));
        (s, bytes)
    }

    /// The link-fault test of issue 12 in the simulator: a 24 MB upload to
    /// an appending server, the connection cut after every 100 acknowledged
    /// chunks, six times, on a short path where the server is the
    /// bottleneck (as on loopback: chunks in flight at a cut have mostly
    /// reached the server). With a token: byte-identical, no chunk appended
    /// twice or out of order, at most 1.15x the file sent. Without (before
    /// this change): every cut restarts from seq 1.
    #[test]
    fn cut_after_every_100_acks_six_times_sends_at_most_1_15x() {
        let link = SimConfig {
            one_way_delay: Duration::from_micros(200),
            service_time: Duration::from_micros(500),
            ..SimConfig::default()
        };
        let (with, bytes) = run_cut_every(&link, true, 100, 6);
        let (without, _) = run_cut_every(&link, false, 100, 6);
        let size = bytes.len() as f64;
        let ratio = |s: &Sim| s.engine.stats().upload_bytes_sent as f64 / size;
        eprintln!(
            "24 MB, cut after every 100 acks x6, server-bound path: restart from seq 1 \
             (no token) {:.3}x, probe and resume (token) {:.3}x ({} probes)",
            ratio(&without),
            ratio(&with),
            with.engine.stats().probes
        );
        for s in [&with, &without] {
            assert_eq!(state(s, "big"), FileState::Completed);
            assert_stored(s, "big", &bytes);
            assert_eq!(s.server.append_violations, 0);
        }
        assert!(ratio(&with) <= 1.15, "{:.3}x", ratio(&with));
        assert_eq!(with.engine.stats().probe_resumes, 6);
        assert_eq!(with.engine.stats().restarts, 0);
        assert_eq!(without.engine.stats().restarts, 6);
        assert_eq!(without.engine.stats().probes, 0);
        assert!(ratio(&without) > 1.5, "{:.3}x", ratio(&without));
    }

    /// The same cuts on a 40 ms, 200 Mbit/s path: the chunks still on the
    /// wire at each cut (about a window) never reached the server and must
    /// go again, so the figure is higher; still far below restarting.
    #[test]
    fn on_a_long_path_the_chunks_lost_on_the_wire_are_all_that_is_sent_again() {
        let link = SimConfig {
            one_way_delay: Duration::from_millis(20),
            bandwidth: Some(200e6 / 8.0),
            ..SimConfig::default()
        };
        let (with, bytes) = run_cut_every(&link, true, 100, 6);
        let (without, _) = run_cut_every(&link, false, 100, 6);
        let size = bytes.len() as f64;
        let ratio = |s: &Sim| s.engine.stats().upload_bytes_sent as f64 / size;
        eprintln!(
            "24 MB, cut after every 100 acks x6, 40 ms 200 Mbit/s: restart from seq 1 \
             (no token) {:.3}x, probe and resume (token) {:.3}x",
            ratio(&without),
            ratio(&with),
        );
        assert_eq!(state(&with, "big"), FileState::Completed);
        assert_stored(&with, "big", &bytes);
        assert_eq!(with.server.append_violations, 0);
        assert_eq!(with.engine.stats().restarts, 0);
        // What went again is at most what was unacknowledged at the cuts.
        assert!(ratio(&with) < 1.0 + 0.6 * (ratio(&without) - 1.0));
    }

    /// A chunk of the dead connection reaches the appending server after
    /// the upload resumed from a probed size: it is appended where it does
    /// not belong, and the final probe reports the wrong size instead of the
    /// upload completing over a corrupt file.
    #[test]
    fn a_stale_chunk_appended_after_the_resume_is_reported_at_the_end() {
        let mut cfg = config(WindowPolicy::Fixed(8), ServerStorage::Appending);
        cfg.probe.settle = Duration::from_millis(100);
        let mut s = Sim::new(Engine::new(cfg), SimConfig::default());
        let bytes = pattern(3 << 20, 8);
        add(&mut s, "v", &bytes);
        while s.engine.stats().acks < 20 {
            s.step();
        }
        let kept = s.cut_stale(Duration::from_millis(300));
        assert!(kept >= 1, "a chunk in transit at the cut");
        s.run(Duration::from_secs(60));
        assert!(
            s.server.append_violations >= 1,
            "the stale chunk was appended"
        );
        assert_eq!(s.engine.stats().probe_resumes, 1);
        assert_eq!(state(&s, "v"), FileState::Failed);
        let failure = s.events.iter().find_map(|e| match e {
            Event::Failed { failure, .. } => Some(failure.to_string()),
            _ => None,
        });
        let failure = failure.expect("a Failed event");
        assert!(failure.contains("stored copy is corrupt"), "{failure}");
    }

    /// The race the README admitted: bytes of the dead connection reach the
    /// appending server after the restart's 1041. Without a token the
    /// upload "completes" over a corrupt file; with one (whose first probe is
    /// refused, so it restarts from seq 1 too) the final probe reports it.
    #[test]
    fn a_stale_chunk_after_a_restart_is_reported_with_a_token_only() {
        for token in [false, true] {
            let mut cfg = config(WindowPolicy::Fixed(8), ServerStorage::Appending);
            cfg.probe.settle = Duration::from_millis(100);
            let mut s = Sim::new(Engine::new(cfg), SimConfig::default());
            let bytes = pattern(3 << 20, 9);
            let spec = if token {
                spec("v")
            } else {
                spec_without_token("v")
            };
            s.engine
                .add_file_hashing(spec, Box::new(MemorySource::new(bytes.clone())), s.now)
                .unwrap();
            let mut refused = false;
            s.server.chunk_rule = Some(Box::new(move |rsp: &mut DownChunkRsp| {
                if !refused {
                    refused = true;
                    *rsp = DownChunkRsp {
                        error: ErrorCode::TokenInvalid,
                        ..DownChunkRsp::default()
                    };
                }
            }));
            while s.engine.stats().acks < 20 {
                s.step();
            }
            assert!(s.cut_stale(Duration::from_millis(150)) >= 1);
            s.run(Duration::from_secs(60));
            assert_eq!(s.engine.stats().restarts, 1, "token {token}");
            assert!(
                s.server.append_violations >= 1,
                "token {token}: stale chunk appended"
            );
            let stored = s.server.stored("v", ServerStorage::Appending).unwrap();
            assert_ne!(stored, bytes, "token {token}: the stored file is corrupt");
            if token {
                assert_eq!(state(&s, "v"), FileState::Failed);
                let failure = s.events.iter().find_map(|e| match e {
                    Event::Failed { failure, .. } => Some(failure.to_string()),
                    _ => None,
                });
                assert!(failure.unwrap().contains("stored copy is corrupt"));
            } else {
                assert_eq!(
                    state(&s, "v"),
                    FileState::Completed,
                    "today's silent success"
                );
            }
        }
    }

    /// An app restart with a journal taken while chunks were in flight
    /// (`in_flight > 0`): with a token the stored size is probed and the
    /// upload continues after it; without one, from seq 1.
    #[test]
    fn an_inexact_journal_probes_with_a_token_and_restarts_without() {
        for token in [true, false] {
            let bytes = pattern(10 * CHUNK as usize + 3, 2);
            let mut s = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
            add(&mut s, "v", &bytes);
            while s.engine.file_status("v").unwrap().acked_prefix < 4 {
                s.step();
            }
            let server = std::mem::take(&mut s.server);
            let held = server.files["v"].appended.len() as u64;
            let mut s2 = sim(WindowPolicy::Fixed(5), ServerStorage::Appending);
            s2.server = server;
            let record = AckRecord {
                acked_prefix: 4,
                acked_beyond: vec![],
                in_flight: 3,
            };
            let spec = if token {
                spec("v")
            } else {
                spec_without_token("v")
            };
            let log_before = s2.server.log.len();
            s2.engine
                .add_resumed_hashing(
                    spec,
                    Box::new(MemorySource::new(bytes.clone())),
                    &record,
                    s2.now,
                )
                .unwrap();
            s2.run(Duration::from_secs(60));
            assert_eq!(state(&s2, "v"), FileState::Completed);
            assert_stored(&s2, "v", &bytes);
            let (id, _, seq) = s2.server.log[log_before].clone();
            if token {
                let k = (held / CHUNK as u64) as u32;
                assert!(k >= 4);
                assert_eq!((id, seq), (MsgId(1043), k + 1));
                assert_eq!(s2.engine.stats().probe_resumes, 1);
            } else {
                assert_eq!((id, seq), (MsgId(1041), 1));
                assert_eq!(s2.engine.stats().probes, 0);
            }
        }
    }
}

/// The upload rate cap: on a fast path, the wire rate of a capped upload
/// is the cap (within 10 %), the uncapped one is far faster, and the file
/// arrives intact.
#[test]
fn a_rate_capped_upload_keeps_to_its_cap() {
    let rate = 2_000_000u64;
    let bytes = pattern(8 << 20, 41);
    let run = |limit: Option<u64>| {
        let mut cfg = config(WindowPolicy::adaptive(), ServerStorage::Positional);
        cfg.rate_limit = limit;
        let mut s = Sim::new(
            Engine::new(cfg),
            SimConfig {
                storage: ServerStorage::Positional,
                one_way_delay: Duration::from_millis(5),
                ..SimConfig::default()
            },
        );
        add(&mut s, "video.mp4", &bytes);
        let took = s.run(Duration::from_secs(600));
        let st = s.engine.file_status("video.mp4").unwrap();
        assert_eq!(st.state, FileState::Completed);
        assert!(
            s.server
                .stored("video.mp4", ServerStorage::Positional)
                .unwrap()
                == bytes
        );
        (took, s.wire_bytes)
    };
    let (capped, wire) = run(Some(rate));
    let measured = wire as f64 / capped.as_secs_f64();
    assert!(
        (measured / rate as f64 - 1.0).abs() < 0.10,
        "{measured:.0} B/s against a cap of {rate}"
    );
    let (free, _) = run(None);
    assert!(free * 4 < capped, "uncapped {free:?}, capped {capped:?}");
}
