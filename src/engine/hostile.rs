//! No reply sequence can break the engine: arbitrary frames of every reply id,
//! naming uploads, downloads and strangers, with cuts, reconnects, timeouts
//! and application calls in between. Checked: no panic; the window bound; no
//! upload seq twice on a connection (except from seq 1 after a drained
//! restart; a size probe alone); an upload completes only after every seq
//! was acknowledged (a forged probe answer cannot stand in: its data must be
//! the file's own bytes, which these replies never are); a
//! download completes only with all its bytes; and at the end every
//! transfer is finished or legitimately waiting (paused, queued behind full
//! slots, or with a request in flight) — never silently stuck.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use proptest::prelude::*;

use super::*;
use crate::sync::lock;

const UPLOADS: [&str; 3] = ["up0", "up1", "av0"];
const DOWNLOADS: [&str; 3] = ["dl0", "dl1", "avd0"];
/// Names a reply may carry: the transfers of both kinds, the server names
/// downloads are given, hostile names, and strangers.
const NAMES: [&str; 10] = [
    "up0", "up1", "av0", "dl0", "dl1", "face.png", "srv.bin", "../x", ".bashrc", "zz",
];
const REPLY_IDS: [u16; 9] = [1032, 1034, 1038, 1042, 1044, 1046, 1048, 1040, 9999];
const ERRORS: [i64; 5] = [0, 0, 0, 1012, 1015];

#[derive(Debug, Clone)]
enum Step {
    Reply {
        id: u16,
        name: Option<usize>,
        seq: Option<u32>,
        error: i64,
        total: Option<u64>,
        data_len: Option<usize>,
        message_id: Option<i64>,
    },
    /// A reply for the oldest chunk the test saw sent: what a correct server says.
    Ack,
    Garbage(u16, Vec<u8>),
    Transmit(u8),
    Cut,
    Connect,
    Advance(u64),
    Pause(usize),
    Resume(usize),
    Cancel(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let reply = (
        0..REPLY_IDS.len(),
        proptest::option::weighted(0.9, 0..NAMES.len()),
        proptest::option::weighted(0.9, prop_oneof![0u32..6, any::<u32>()]),
        0..ERRORS.len(),
        proptest::option::weighted(0.7, prop_oneof![0u64..200_000, any::<u64>()]),
        proptest::option::weighted(0.8, prop_oneof![Just(32_768usize), 0usize..40_000]),
        proptest::option::weighted(0.7, 4i64..8),
    )
        .prop_map(
            |(id, name, seq, e, total, data_len, message_id)| Step::Reply {
                id: REPLY_IDS[id],
                name,
                seq,
                error: ERRORS[e],
                total,
                data_len,
                message_id,
            },
        );
    prop_oneof![
        6 => reply,
        6 => Just(Step::Ack),
        1 => (prop::sample::select(REPLY_IDS.to_vec()), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(id, b)| Step::Garbage(id, b)),
        4 => (1u8..20).prop_map(Step::Transmit),
        1 => Just(Step::Cut),
        1 => Just(Step::Connect),
        1 => (0u64..40_000).prop_map(Step::Advance),
        1 => (0..6usize).prop_map(Step::Pause),
        1 => (0..6usize).prop_map(Step::Resume),
        1 => (0..6usize).prop_map(Step::Cancel),
    ]
}

struct Harness {
    engine: Engine,
    now: Instant,
    out: Vec<u8>,
    /// (transfer, seq) of upload chunks sent on this connection since the
    /// transfer's last seq 1, oldest first.
    sent: Vec<(FileId, u32, MsgId)>,
    /// Upload seqs a success reply named after they were sent.
    acked: HashMap<FileId, HashSet<u32>>,
    sinks: HashMap<String, MemorySink>,
    max_seq: HashMap<FileId, u32>,
}

impl Harness {
    fn new(storage: ServerStorage) -> Harness {
        let now = Instant::now();
        let mut engine = Engine::new(EngineConfig {
            server_storage: storage,
            chunk_size: 1000,
            max_active_files: 4,
            ..EngineConfig::default()
        });
        let mut max_seq = HashMap::new();
        for (i, name) in UPLOADS.iter().enumerate() {
            let bytes: Vec<u8> = (0..(i * 2_500 + 1_500)).map(|b| b as u8).collect();
            let mut spec = FileSpec::new(*name, format!("/mem/{name}"));
            spec.md5 = Some(md5_of(&bytes));
            spec.avatar = name.starts_with("av");
            spec.hold = i == 1;
            spec.message_id = 5;
            // With a token an upload probes the stored size (1047 seq 1 for
            // its name) after cuts and at the end: hostile 1048s for it too.
            if i == 0 {
                spec.token = "tok".into();
            }
            let id = engine
                .add_file(spec, Box::new(MemorySource::new(bytes.clone())), now)
                .unwrap();
            max_seq.insert(id, bytes.len().div_ceil(1000) as u32);
        }
        let mut sinks = HashMap::new();
        for (i, name) in DOWNLOADS.iter().enumerate() {
            let mut spec = DownloadSpec::new(*name, 5 + i as i64);
            spec.hold = i == 1;
            if name.starts_with("av") {
                spec.avatar = Some(AvatarRef {
                    name: "face.png".into(),
                    client_path: String::new(),
                    req_type: "1".into(),
                });
            }
            let sink = MemorySink::default();
            sinks.insert(name.to_string(), sink.clone());
            engine.add_download(spec, Box::new(sink), now).unwrap();
        }
        engine.connected(now);
        Harness {
            engine,
            now,
            out: Vec::new(),
            sent: Vec::new(),
            acked: HashMap::new(),
            sinks,
            max_seq,
        }
    }

    fn transmit(&mut self, n: u8) {
        for _ in 0..n {
            let before = self.engine.in_flight();
            let cwnd = self.engine.window().cwnd() as usize;
            self.out.clear();
            let Some(t) = self.engine.poll_transmit(self.now, &mut self.out) else {
                return;
            };
            assert!(before < cwnd, "sent with {before} in flight, window {cwnd}");
            assert_eq!(t.len, self.out.len(), "Transmit.len counts the wire bytes");
            let name = self.engine.name_of(t.file).unwrap().to_string();
            if self.engine.is_download(&name) == Some(true) {
                continue;
            }
            if t.id == MsgId::IMG_CHAT_DOWN_REQ {
                let status = self.engine.file_status(&name).unwrap();
                assert_eq!(status.in_flight, 1, "{name}: a size probe goes alone");
                continue;
            }
            if t.seq == 1 {
                let status = self.engine.file_status(&name).unwrap();
                assert_eq!(status.in_flight, 1, "{name}: seq 1 goes alone");
                self.sent.retain(|(f, _, _)| *f != t.file);
                self.acked.remove(&t.file);
            }
            assert!(
                !self
                    .sent
                    .iter()
                    .any(|(f, s, _)| *f == t.file && *s == t.seq),
                "{name}: seq {} sent twice on one connection",
                t.seq
            );
            self.sent.push((t.file, t.seq, t.id));
        }
    }

    fn reply(&mut self, id: u16, body: serde_json::Value) {
        let body = serde_json::to_vec(&body).unwrap();
        self.feed(id, &body);
    }

    fn feed(&mut self, id: u16, body: &[u8]) {
        self.engine.handle_frame(self.now, MsgId(id), body);
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Reply {
                id,
                name,
                seq,
                error,
                total,
                data_len,
                message_id,
            } => {
                let name = name.map(|i| NAMES[i]);
                let mut body = serde_json::json!({ "error": error });
                if let Some(n) = name {
                    body["name"] = n.into();
                }
                if let Some(s) = seq {
                    body["seq"] = s.into();
                }
                if let Some(t) = total {
                    body["total_size"] = t.to_string().into();
                }
                if let Some(m) = message_id {
                    body["message_id"] = m.into();
                }
                if let Some(len) = data_len {
                    let data = base64::engine::general_purpose::STANDARD.encode(vec![7u8; len]);
                    body["data"] = data.into();
                }
                if error == 0 {
                    if let (Some(n), Some(s)) = (name, seq) {
                        self.note_ack(n, s);
                    }
                }
                self.reply(id, body);
            }
            Step::Ack => {
                if self.sent.is_empty() {
                    return;
                }
                let (file, seq, id) = self.sent[0];
                let Some(name) = self.engine.name_of(file).map(str::to_string) else {
                    self.sent.remove(0);
                    return;
                };
                self.note_ack(&name, seq);
                let body = serde_json::json!({ "error": 0, "name": name, "seq": seq });
                self.reply(id.reply().0, body);
            }
            Step::Garbage(id, bytes) => self.feed(id, &bytes),
            Step::Transmit(n) => self.transmit(n),
            Step::Cut => {
                self.engine.connection_lost(self.now);
                self.sent.clear();
            }
            Step::Connect => {
                if !self.engine.is_connected() {
                    self.engine.connected(self.now);
                }
            }
            Step::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.engine.handle_timeout(self.now);
            }
            Step::Pause(i) => drop(self.engine.pause(all_names()[i], self.now)),
            Step::Resume(i) => drop(self.engine.resume(all_names()[i], self.now)),
            Step::Cancel(i) => drop(self.engine.cancel(all_names()[i], self.now)),
        }
        self.check_events();
    }

    fn note_ack(&mut self, name: &str, seq: u32) {
        let Some(status) = self.engine.file_status(name) else {
            return;
        };
        let Some(&file) = self
            .max_seq
            .keys()
            .find(|f| self.engine.name_of(**f) == Some(name))
        else {
            return;
        };
        if status.state.is_terminal() {
            return;
        }
        if self.sent.iter().any(|(f, s, _)| *f == file && *s == seq) {
            self.acked.entry(file).or_default().insert(seq);
        }
        self.sent.retain(|(f, s, _)| !(*f == file && *s == seq));
    }

    fn check_events(&mut self) {
        while let Some(event) = self.engine.poll_event() {
            let Event::Completed { name, bytes, .. } = event else {
                continue;
            };
            if self.engine.is_download(&name) == Some(true) {
                let sink = &self.sinks[&name];
                let got = lock(&sink.0);
                assert!(got.1, "{name}: completed without finishing its sink");
                assert_eq!(got.0.len() as u64, bytes, "{name}: bytes held");
                continue;
            }
            let (&file, &max_seq) = self
                .max_seq
                .iter()
                .find(|(f, _)| self.engine.name_of(**f) == Some(name.as_str()))
                .unwrap();
            let acked = self.acked.get(&file).cloned().unwrap_or_default();
            for seq in 1..=max_seq {
                assert!(
                    acked.contains(&seq),
                    "{name}: completed without an ack for seq {seq}"
                );
            }
        }
    }

    /// Nothing may be stuck: reconnect, send what may go, and look at every
    /// transfer.
    fn check_liveness(&mut self) {
        if !self.engine.is_connected() {
            self.engine.connected(self.now);
        }
        // A size probe may wait out its settle delay: let it go.
        self.now += self.engine.config().probe.settle;
        self.engine.handle_timeout(self.now);
        self.transmit(u8::MAX);
        self.check_events();
        let window_full = self.engine.in_flight() >= self.engine.window().cwnd() as usize;
        let statuses = self.engine.statuses();
        let sending = statuses
            .iter()
            .filter(|s| s.state == FileState::Sending)
            .count();
        for s in &statuses {
            match s.state {
                FileState::Sending => assert!(
                    s.in_flight > 0 || window_full,
                    "{}: sending, nothing in flight, nothing to send: {s:?}",
                    s.name
                ),
                FileState::Queued => assert!(
                    sending >= self.engine.config().max_active_files,
                    "{}: queued with a free slot",
                    s.name
                ),
                _ => {}
            }
        }
    }
}

fn all_names() -> [&'static str; 6] {
    [
        UPLOADS[0],
        UPLOADS[1],
        UPLOADS[2],
        DOWNLOADS[0],
        DOWNLOADS[1],
        DOWNLOADS[2],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_reply_sequence_breaks_the_engine(
        appending in any::<bool>(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let storage = if appending { ServerStorage::Appending } else { ServerStorage::Positional };
        let mut h = Harness::new(storage);
        for s in steps {
            h.step(s);
        }
        h.check_liveness();
    }
}

/// The reply that used to panic the engine: an upload reply named like a
/// download in progress. It never acts on the download's data; the download
/// fails with a clear reason instead of waiting on a confused server.
#[test]
fn an_upload_reply_naming_a_download_fails_it_clearly() {
    let mut h = Harness::new(ServerStorage::Appending);
    h.transmit(50);
    h.reply(
        1046,
        serde_json::json!({"error": 0, "message_id": 5, "name": "srv.bin", "total_size": "70000"}),
    );
    h.transmit(50);
    let before = h.engine.file_status("dl0").unwrap();
    assert!(before.in_flight > 0, "{before:?}");
    assert_eq!(lock(&h.sinks["dl0"].0).0.len(), 70_000, "the sink is open");
    for id in [1042, 1038, 1044, 1032] {
        h.reply(id, serde_json::json!({"error": 0, "name": "dl0", "seq": 1}));
        h.reply(
            id,
            serde_json::json!({"error": 1015, "name": "dl0", "seq": 1}),
        );
    }
    assert_eq!(h.engine.stats().wrong_kind_replies, 8);
    assert_eq!(h.engine.stats().acks, 0, "nothing was taken as an ack");
    let dl = h.engine.file_status("dl0").unwrap();
    assert_eq!((dl.state, dl.acked), (FileState::Failed, 0));
    assert!(
        lock(&h.sinks["dl0"].0).0.is_empty(),
        "the partial file is removed"
    );
    let reason = std::iter::from_fn(|| h.engine.poll_event())
        .find_map(|e| match e {
            Event::Failed { name, failure } if name == "dl0" => Some(failure.to_string()),
            _ => None,
        })
        .expect("a Failed event for dl0");
    assert!(reason.contains("an upload reply (1042"), "{reason}");
    // A download reply naming an upload finds no download and changes nothing.
    let up = h.engine.file_status("up0").unwrap();
    h.reply(
        1048,
        serde_json::json!({"error": 0, "name": "up0", "seq": 1, "data": ""}),
    );
    assert_eq!(h.engine.file_status("up0").unwrap(), up);
    h.check_liveness();
}
