//! Memory of an upload is bounded by the window, not the file: the engine
//! holds one chunk of scratch and a record per in-flight request, whatever
//! the file size. Measured with a counting allocator over a 64 MiB and a
//! 3 GiB sparse file, each uploaded through the real `FileSource` to an
//! in-process peer that acknowledges every chunk at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chatxfer::engine::{Engine, EngineConfig, Event, FileSpec, FileState, WindowPolicy};
use chatxfer::protocol::messages::UploadRsp;
use chatxfer::protocol::{frame, MsgId, MAX_BODY_LEN};
use chatxfer::runtime::files::FileSource;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The seq of a chunk request, read from the JSON head (the engine writes
/// `data` last, so the head is small).
fn seq_of(body: &[u8]) -> u32 {
    let head = &body[..body.len().min(400)];
    let text = String::from_utf8_lossy(head);
    let at = text.find("\"seq\":").expect("seq field") + 6;
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Uploads a sparse file of `size` bytes; returns the peak heap growth in bytes.
fn upload_peak(size: u64) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.bin");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();

    let mut engine = Engine::new(EngineConfig {
        window: WindowPolicy::Fixed(64),
        ..EngineConfig::default()
    });
    let now = Instant::now();
    engine.connected(now);
    let mut spec = FileSpec::new("sparse.bin", &path);
    spec.md5 = Some("0".repeat(32)); // the peer does not check it
    spec.message_id = 1;
    let mut out = Vec::with_capacity(64 * 45_000);
    let mut replies: Vec<(MsgId, Vec<u8>)> = Vec::with_capacity(64);

    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    engine
        .add_file(spec, Box::new(FileSource::open(&path).unwrap()), now)
        .unwrap();
    loop {
        out.clear();
        while engine.poll_transmit(now, &mut out).is_some() {}
        let mut rest = &out[..];
        while let Some((id, body, used)) = frame::split_frame(rest, MAX_BODY_LEN).unwrap() {
            let seq = seq_of(body);
            let body =
                UploadRsp::encode_success(id.reply(), "sparse.bin", seq, 0, "", 0, 0, 0, 0, size);
            replies.push((id.reply(), body));
            rest = &rest[used..];
        }
        if replies.is_empty() {
            break;
        }
        for (id, body) in replies.drain(..) {
            engine.handle_frame(now, id, &body);
        }
        while let Some(e) = engine.poll_event() {
            if let Event::Failed { failure, .. } = e {
                panic!("upload failed: {failure}");
            }
        }
    }
    assert_eq!(
        engine.file_status("sparse.bin").unwrap().state,
        FileState::Completed
    );
    PEAK.load(Ordering::Relaxed) - base
}

#[test]
fn upload_memory_does_not_grow_with_file_size() {
    let small = upload_peak(64 << 20);
    let large = upload_peak(3 << 30);
    eprintln!("peak heap growth: 64 MiB file {small} bytes, 3 GiB file {large} bytes");
    assert!(
        large < 4 << 20,
        "3 GiB upload peaked at {large} bytes of heap"
    );
    assert!(
        large <= small + (256 << 10),
        "heap grew with the file: {small} -> {large} bytes"
    );
}
