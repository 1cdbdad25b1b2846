//! The foreign layers' Rust side (`chatxfer::ffi`) against the reference
//! server: the sans-IO engine over a socket the test owns, and a download
//! through the networked `Client`. (The server is not part of the core
//! library, so these are not among the core's unit tests.)

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use chatxfer::engine::FileState;
use chatxfer::ffi::*;

fn temp_file(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

/// The sans-IO engine over a std socket this test owns, against the
/// reference server: the loop a host like `FileTcpMgr` runs.
#[test]
fn sans_io_engine_uploads_through_a_socket_the_host_owns() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    let file = temp_file(300_000);
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();

    let mut e = SansIo::new(false);
    let args = UploadArgs {
        path: file.path().display().to_string(),
        name: "x.bin".into(),
        uid: 7,
        sender: 7,
        receiver: 8,
        message_id: 1,
        md5: String::new(),
        priority: 0,
        hold: true,
        token: String::new(),
        avatar: false,
    };
    e.add_file(&args).unwrap();
    assert_eq!(e.add_file(&args).unwrap_err().code, Code::DuplicateName);
    e.connected();
    assert!(e.poll_transmit(1 << 20).is_empty(), "held: nothing to send");
    e.resume("x.bin").unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 64 * 1024];
    let mut completed = None;
    while completed.is_none() && Instant::now() < deadline {
        let out = e.poll_transmit(256 * 1024);
        sock.write_all(&out).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => panic!("server closed"),
            Ok(n) => e.handle_bytes(&buf[..n]).unwrap(),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(err) => panic!("read: {err}"),
        }
        if e.next_timeout_ms() == 0 {
            e.handle_timeout();
        }
        for ev in e.poll_events() {
            if let chatxfer::engine::Event::Completed { md5, .. } = ev {
                completed = Some(md5);
            }
        }
    }
    let md5 = completed.expect("upload completed");
    let stored = std::fs::read(store.path().join("7").join("x.bin")).unwrap();
    assert_eq!(stored, std::fs::read(file.path()).unwrap());
    assert_eq!(md5, chatxfer::engine::md5_of(&stored));
    assert_eq!(
        e.status("x.bin").unwrap().state,
        chatxfer::engine::FileState::Completed
    );
    assert!(e.is_idle());
    assert_eq!(e.status("nope").unwrap_err().code, Code::UnknownName);
    // A header announcing an over-long body is refused, not buffered.
    assert_eq!(
        e.handle_bytes(&[0x04, 0x12, 0xff, 0xff, 0xff, 0xff])
            .unwrap_err()
            .code,
        Code::BadFrame
    );
    rt.block_on(server.shutdown());
}

/// A download through the networked [`Client`]: held until
/// `start_download`, then Saved (with the path) and Completed, and the copy
/// is byte-identical to what was uploaded. Events come through a sink into
/// a channel, so every wait is on an event, never on the clock.
#[test]
fn client_downloads_a_held_file_back_by_message_id() {
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    let port = server.local_addr().port();
    let src = temp_file(300_000);
    let (tx, rx) = std::sync::mpsc::channel::<FlatEvent>();
    let tx = std::sync::Mutex::new(tx);
    let t = Client::new(Some(Box::new(move |e: &chatxfer::runtime::ClientEvent| {
        let _ = chatxfer::sync::lock(&tx).send(FlatEvent::from_client_event(e));
    })));
    let dl = |name: &str| DownloadArgs {
        name: name.into(),
        message_id: 77,
        uid: 5,
        token: "tok".into(),
        dest_dir: dest.path().to_str().unwrap().into(),
        md5: String::new(),
        priority: 0,
        avatar: None,
        known: None,
    };
    assert_eq!(
        t.add_download(dl("d")).unwrap_err().code,
        Code::NotConnected
    );
    t.connect("127.0.0.1", port).unwrap();
    let up = |name: &str, message_id: i64| UploadArgs {
        path: src.path().to_str().unwrap().into(),
        name: name.into(),
        uid: 5,
        sender: 5,
        receiver: 6,
        message_id,
        md5: String::new(),
        priority: 0,
        hold: false,
        token: "tok".into(),
        avatar: false,
    };
    t.add_file(&up("up.bin", 77)).unwrap();
    let mut events = Vec::new();
    let mut wait_for = |name: &str, kind: EventKind| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = events
                .iter()
                .find(|e: &&FlatEvent| e.name == name && e.kind == kind)
            {
                return (e.clone(), events.clone());
            }
            if let Some(e) = events
                .iter()
                .find(|e: &&FlatEvent| e.name == name && e.kind == EventKind::Failed)
            {
                panic!("{name} failed: {e:?}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => events.push(e),
                Err(_) => panic!("no {kind:?} for {name} within 30 s: {events:?}"),
            }
        }
    };
    wait_for("up.bin", EventKind::Completed);

    let bad = DownloadArgs {
        md5: "xyz".into(),
        ..dl("d")
    };
    assert_eq!(t.add_download(bad).unwrap_err().code, Code::InvalidArgument);
    t.add_download(dl("d")).unwrap();
    assert_eq!(
        t.add_download(dl("d")).unwrap_err().code,
        Code::DuplicateName
    );
    assert_eq!(t.status("d").unwrap().state, FileState::Paused);
    // Held, not started: a later upload's whole round trip through the same
    // connection completes while "d" reports nothing and writes nothing.
    t.add_file(&up("later.bin", 78)).unwrap();
    let (_, seen) = wait_for("later.bin", EventKind::Completed);
    assert!(
        seen.iter()
            .filter(|e| e.name == "d")
            .all(|e| e.kind == EventKind::StateChanged && e.state == Some(FileState::Paused)),
        "a held download did more than wait: {seen:?}"
    );
    assert!(!dest.path().join("up.bin").exists(), "held, not started");
    assert_eq!(t.status("d").unwrap().state, FileState::Paused);
    assert_eq!(
        t.start_download("nope").unwrap_err().code,
        Code::UnknownName
    );
    t.start_download("d").unwrap();
    let (saved, _) = wait_for("d", EventKind::Saved);
    let (done, _) = wait_for("d", EventKind::Completed);
    assert_eq!(done.total, 300_000);
    assert_eq!(saved.path, dest.path().join("up.bin").to_str().unwrap());
    assert_eq!(
        std::fs::read(&saved.path).unwrap(),
        std::fs::read(src.path()).unwrap()
    );
    // A held one is cancelled like any transfer, and cannot start after.
    t.add_download(dl("e")).unwrap();
    t.cancel("e").unwrap();
    assert_eq!(t.status("e").unwrap().state, FileState::Cancelled);
    assert_eq!(t.start_download("e").unwrap_err().code, Code::WrongState);

    // The real client's avatar path through the same object: a chat upload
    // without its message id is refused (the deployed server would crash),
    // an avatar needs none; it comes back by name with its client path and
    // request type.
    assert_eq!(
        t.add_file(&up("no-message.bin", 0)).unwrap_err().code,
        Code::InvalidArgument
    );
    let avatar = UploadArgs {
        name: "me.png".into(),
        avatar: true,
        ..up("me.png", 0)
    };
    t.add_file(&avatar).unwrap();
    wait_for("me.png", EventKind::Completed);
    t.add_download(DownloadArgs {
        avatar: Some(("me.png".into(), "/icons/me.png".into(), "2".into())),
        ..dl("av")
    })
    .unwrap();
    t.start_download("av").unwrap();
    let (saved, _) = wait_for("av", EventKind::Saved);
    assert_eq!(
        std::fs::read(&saved.path).unwrap(),
        std::fs::read(src.path()).unwrap()
    );
    // The app routes the saved avatar by what its request carried.
    assert_eq!(
        (saved.client_path.as_str(), saved.req_type.as_str()),
        ("/icons/me.png", "2")
    );
    let (chat_saved, _) = wait_for("d", EventKind::Saved);
    assert_eq!(
        (chat_saved.client_path, chat_saved.req_type),
        ("".into(), "".into())
    );
    // A failed transfer's Resume (the bubble's click) starts it over.
    t.add_download(DownloadArgs {
        message_id: 999,
        ..dl("gone")
    })
    .unwrap();
    t.cancel("gone").unwrap();
    assert_eq!(t.resume("gone").unwrap_err().code, Code::WrongState);
    t.retry("gone").unwrap();
    assert_eq!(t.status("gone").unwrap().state, FileState::Sending);

    // The md5 an app needs before it announces a message, off its thread:
    // progress, then the md5 of the bytes; a missing file is refused at once.
    let big = temp_file(5 << 20);
    t.compute_md5(big.path().to_str().unwrap()).unwrap();
    let (ready, seen) = wait_for("", EventKind::Md5Ready);
    assert_eq!(ready.path, big.path().to_str().unwrap());
    assert_eq!(ready.code, 0, "{ready:?}");
    assert_eq!(
        ready.md5,
        chatxfer::engine::md5_of(&std::fs::read(big.path()).unwrap())
    );
    let progress: Vec<u64> = seen
        .iter()
        .filter(|e| e.kind == EventKind::Md5Progress)
        .map(|e| e.acked)
        .collect();
    assert!(progress.len() >= 2, "progress: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&(5 << 20)));
    assert_eq!(
        t.compute_md5(dest.path().join("missing").to_str().unwrap())
            .unwrap_err()
            .code,
        Code::Io
    );
    t.shutdown(Some(Duration::from_secs(5))).unwrap();
    drop(server);
}

/// Drives `e` over `sock` until `done` says so for an event, with a bounded
/// deadline; every event seen is returned. The host loop of a `FileTcpMgr`.
fn drive_until(
    e: &mut SansIo,
    sock: &mut std::net::TcpStream,
    done: impl FnMut(&chatxfer::engine::Event) -> bool,
) -> Vec<chatxfer::engine::Event> {
    drive_events(e, sock, done, false)
}

/// [`drive_until`], with Failed events allowed when `failures_expected`.
fn drive_events(
    e: &mut SansIo,
    sock: &mut std::net::TcpStream,
    mut done: impl FnMut(&chatxfer::engine::Event) -> bool,
    failures_expected: bool,
) -> Vec<chatxfer::engine::Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let out = e.poll_transmit(256 * 1024);
        sock.write_all(&out).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => panic!("server closed: {seen:?}"),
            Ok(n) => e.handle_bytes(&buf[..n]).unwrap(),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("read: {err}"),
        }
        if e.next_timeout_ms() == 0 {
            e.handle_timeout();
        }
        for ev in e.poll_events() {
            if let chatxfer::engine::Event::Failed { .. } = ev {
                assert!(failures_expected, "failed: {ev:?}");
            }
            let stop = done(&ev);
            seen.push(ev);
            if stop {
                return seen;
            }
        }
    }
    panic!("no final event within 30 s: {seen:?}");
}

/// Downloads on the sans-IO engine: uploaded, then downloaded back by
/// message id through the same host-owned socket, held until
/// `start_download`, saved under a free name next to an existing file of
/// the same name (never over it), byte-identical.
#[test]
fn sans_io_engine_downloads_through_a_socket_the_host_owns() {
    use chatxfer::engine::Event;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    // Several chunks, and not a multiple of the chunk size.
    let file = temp_file(1_000_003);
    let want = std::fs::read(file.path()).unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut e = SansIo::new(false);
    e.connected();
    e.add_file(&UploadArgs {
        path: file.path().display().to_string(),
        name: "pic.bin".into(),
        uid: 7,
        sender: 7,
        receiver: 8,
        message_id: 42,
        md5: String::new(),
        priority: 0,
        hold: false,
        token: String::new(),
        avatar: false,
    })
    .unwrap();
    drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "pic.bin"),
    );

    // A file of the server's name is already there: it must survive.
    std::fs::write(dest.path().join("pic.bin"), b"mine").unwrap();
    let dl = DownloadArgs {
        name: "d".into(),
        message_id: 42,
        uid: 8,
        token: String::new(),
        dest_dir: dest.path().to_str().unwrap().into(),
        md5: chatxfer::engine::md5_of(&want),
        priority: 0,
        avatar: None,
        known: None,
    };
    let missing = DownloadArgs {
        dest_dir: dest.path().join("nope").to_str().unwrap().into(),
        ..dl.clone()
    };
    assert_eq!(
        e.add_download(&missing).unwrap_err().code,
        Code::InvalidArgument
    );
    e.add_download(&dl).unwrap();
    assert_eq!(e.add_download(&dl).unwrap_err().code, Code::DuplicateName);
    assert_eq!(e.status("d").unwrap().state, FileState::Paused);
    // Held: nothing goes to the server.
    assert!(e.poll_transmit(1 << 20).is_empty(), "held: nothing to send");
    assert_eq!(
        e.start_download("nope").unwrap_err().code,
        Code::UnknownName
    );
    e.start_download("d").unwrap();
    let seen = drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "d"),
    );
    let saved: Vec<_> = seen
        .iter()
        .filter_map(|ev| match ev {
            Event::Saved { name, path, .. } if name == "d" => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1, "one Saved before Completed: {seen:?}");
    assert_ne!(
        saved[0],
        dest.path().join("pic.bin"),
        "not over the existing file"
    );
    assert_eq!(saved[0].parent(), Some(dest.path()));
    assert_eq!(std::fs::read(&saved[0]).unwrap(), want);
    assert_eq!(std::fs::read(dest.path().join("pic.bin")).unwrap(), b"mine");
    let parts: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "no partial file left: {parts:?}");
    let st = e.status("d").unwrap();
    assert_eq!(st.state, FileState::Completed);
    assert_eq!(st.total, want.len() as u64);
    assert!(e.is_idle());
    rt.block_on(server.shutdown());
}

/// What [`c_drive`] saw of one event: kind, name and path, copied while the
/// engine's strings were valid.
type CEvent = (EventKind, String, String);

/// Drives the C ABI's engine over `sock` with a `cap`-byte transmit buffer
/// until transfer `name` completes (panics on its failure or after 30 s).
///
/// # Safety
/// `e` is a live engine from `chatxfer_engine_new`.
unsafe fn c_drive(
    e: *mut capi::chatxfer_engine,
    sock: &mut std::net::TcpStream,
    name: &str,
    cap: usize,
) -> Vec<CEvent> {
    use std::ffi::CStr;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = vec![0u8; cap];
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        loop {
            let mut n = 0usize;
            assert_eq!(
                capi::chatxfer_engine_poll_transmit(e, out.as_mut_ptr(), cap, &mut n),
                Code::Ok
            );
            assert!(n <= cap);
            if n == 0 {
                break;
            }
            sock.write_all(&out[..n]).unwrap();
        }
        match sock.read(&mut buf) {
            Ok(0) => panic!("server closed: {seen:?}"),
            Ok(n) => assert_eq!(
                capi::chatxfer_engine_handle_bytes(e, buf.as_ptr(), n),
                Code::Ok
            ),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("read: {err}"),
        }
        let mut ms = -2i64;
        assert_eq!(capi::chatxfer_engine_next_timeout_ms(e, &mut ms), Code::Ok);
        assert!(ms >= -1);
        if ms == 0 {
            assert_eq!(capi::chatxfer_engine_handle_timeout(e), Code::Ok);
        }
        loop {
            let mut ev = std::mem::MaybeUninit::<capi::chatxfer_event>::uninit();
            let mut got = false;
            assert_eq!(
                capi::chatxfer_engine_poll_event(e, ev.as_mut_ptr(), &mut got),
                Code::Ok
            );
            if !got {
                break;
            }
            let ev = ev.assume_init();
            let s = |p| CStr::from_ptr(p).to_str().unwrap().to_owned();
            let seen_one = (ev.kind, s(ev.name), s(ev.path));
            assert_ne!(
                ev.kind,
                EventKind::Failed,
                "{seen_one:?}: {}",
                s(ev.message)
            );
            let done = seen_one.0 == EventKind::Completed && seen_one.1 == name;
            seen.push(seen_one);
            if done {
                return seen;
            }
        }
    }
    panic!("{name}: no Completed within 30 s: {seen:?}");
}

fn connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    sock
}

/// The C ABI's engine from Rust, with a transmit buffer far smaller than a
/// frame: the bytes handed out must still be whole frames in order. A
/// connection cut in the middle of a frame, then a new one: the cut frame's
/// rest must not open the new connection (the server would read garbage),
/// and the upload completes byte-identically; then the file comes back
/// through `chatxfer_engine_add_download`/`_start_download`.
#[test]
fn c_engine_cuts_frames_to_any_buffer_and_drops_a_cut_frame_on_reconnect() {
    use std::ffi::CString;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    let file = temp_file(200_003);
    let want = std::fs::read(file.path()).unwrap();
    let path = CString::new(file.path().to_str().unwrap()).unwrap();
    let dest_c = CString::new(dest.path().to_str().unwrap()).unwrap();
    unsafe {
        let mut e: *mut capi::chatxfer_engine = std::ptr::null_mut();
        assert_eq!(capi::chatxfer_engine_new(false, &mut e), Code::Ok);
        assert!(!e.is_null());
        let spec = capi::chatxfer_upload_spec {
            path: path.as_ptr(),
            name: c"cut.bin".as_ptr(),
            uid: 7,
            sender: 7,
            receiver: 8,
            message_id: 9,
            md5: std::ptr::null(),
            priority: 0,
            hold: false,
            token: std::ptr::null(),
            avatar: false,
        };
        assert_eq!(capi::chatxfer_engine_add_upload(e, &spec), Code::Ok);

        // First connection: 100 bytes of the first frame, then it drops.
        let mut first = connect(server.local_addr());
        assert_eq!(capi::chatxfer_engine_connected(e), Code::Ok);
        let mut head = [0u8; 100];
        let mut n = 0usize;
        assert_eq!(
            capi::chatxfer_engine_poll_transmit(e, head.as_mut_ptr(), head.len(), &mut n),
            Code::Ok
        );
        assert_eq!(n, head.len(), "a chunk frame is longer than 100 bytes");
        first.write_all(&head).unwrap();
        drop(first);
        assert_eq!(capi::chatxfer_engine_connection_lost(e), Code::Ok);

        let mut second = connect(server.local_addr());
        assert_eq!(capi::chatxfer_engine_connected(e), Code::Ok);
        c_drive(e, &mut second, "cut.bin", 7);
        let stored = std::fs::read(store.path().join("7").join("cut.bin")).unwrap();
        assert!(stored == want, "the stored copy differs");

        let dl = capi::chatxfer_download_spec {
            name: c"back".as_ptr(),
            message_id: 9,
            uid: 8,
            token: c"".as_ptr(),
            dest_dir: dest_c.as_ptr(),
            md5: std::ptr::null(),
            priority: 0,
            avatar_name: std::ptr::null(),
            avatar_client_path: std::ptr::null(),
            avatar_req_type: std::ptr::null(),
            known_name: std::ptr::null(),
            known_size: 0,
            known_sender: 0,
        };
        assert_eq!(capi::chatxfer_engine_add_download(e, &dl), Code::Ok);
        assert_eq!(
            capi::chatxfer_engine_add_download(e, &dl),
            Code::DuplicateName
        );
        assert_eq!(
            capi::chatxfer_engine_start_download(e, c"back".as_ptr()),
            Code::Ok
        );
        let seen = c_drive(e, &mut second, "back", 1000);
        let saved: Vec<_> = seen
            .iter()
            .filter(|(k, n, _)| *k == EventKind::Saved && n == "back")
            .map(|(_, _, p)| p.clone())
            .collect();
        assert_eq!(saved, [dest.path().join("cut.bin").to_str().unwrap()]);
        assert!(
            std::fs::read(&saved[0]).unwrap() == want,
            "the downloaded copy differs"
        );
        let mut st = std::mem::MaybeUninit::<capi::chatxfer_file_status>::uninit();
        assert_eq!(
            capi::chatxfer_engine_status(e, c"back".as_ptr(), st.as_mut_ptr()),
            Code::Ok
        );
        let st = st.assume_init();
        assert_eq!(st.state, XferState::Completed);
        assert_eq!(st.total, want.len() as u64);
        capi::chatxfer_engine_free(e);
    }
    rt.block_on(server.shutdown());
}

/// A sans-IO download whose connection drops part-way: after
/// `connection_lost` and a new socket, it continues into the same partial
/// file and ends byte-identical, saved once, with no partial file left.
#[test]
fn sans_io_download_survives_a_connection_cut() {
    use chatxfer::engine::Event;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    let file = temp_file(3_000_001);
    let want = std::fs::read(file.path()).unwrap();
    let mut e = SansIo::new(false);
    let mut sock = connect(server.local_addr());
    e.connected();
    e.add_file(&UploadArgs {
        path: file.path().display().to_string(),
        name: "big.bin".into(),
        uid: 7,
        sender: 7,
        receiver: 8,
        message_id: 11,
        md5: String::new(),
        priority: 0,
        hold: false,
        token: String::new(),
        avatar: false,
    })
    .unwrap();
    drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "big.bin"),
    );
    e.add_download(&DownloadArgs {
        name: "d".into(),
        message_id: 11,
        uid: 8,
        token: String::new(),
        dest_dir: dest.path().to_str().unwrap().into(),
        md5: chatxfer::engine::md5_of(&want),
        priority: 0,
        avatar: None,
        known: None,
    })
    .unwrap();
    e.start_download("d").unwrap();
    drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Progress { name, .. } if name == "d"),
    );
    let at_cut = e.status("d").unwrap();
    assert!(
        at_cut.acked > 0 && at_cut.acked < want.len() as u64,
        "cut part-way: {at_cut:?}"
    );
    drop(sock);
    e.connection_lost();
    let mut sock = connect(server.local_addr());
    e.connected();
    let seen = drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "d"),
    );
    let saved: Vec<_> = seen
        .iter()
        .filter_map(|ev| match ev {
            Event::Saved { name, path, .. } if name == "d" => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(saved, [dest.path().join("big.bin")]);
    assert!(
        std::fs::read(&saved[0]).unwrap() == want,
        "the copy differs"
    );
    let names: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"], "nothing but the file");
    rt.block_on(server.shutdown());
}

/// Retry on the sans-IO engine, as on the `Client`: a cancelled upload and
/// a cancelled download start over under their names and complete
/// byte-identically; a failed download (wrong md5) is started over by
/// `resume` (the bubble's click) and fails again, as it must, with a second
/// Failed event; a transfer in progress or done is not retried.
#[test]
fn sans_io_engine_retries_cancelled_and_failed_transfers() {
    use chatxfer::engine::Event;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(chatxfer_tools::server::start(
            "127.0.0.1:0",
            chatxfer_tools::server::ServerConfig::new(store.path()),
        ))
        .unwrap();
    let file = temp_file(500_001);
    let want = std::fs::read(file.path()).unwrap();
    let mut e = SansIo::new(false);
    let mut sock = connect(server.local_addr());
    e.connected();
    e.add_file(&UploadArgs {
        path: file.path().display().to_string(),
        name: "r.bin".into(),
        uid: 7,
        sender: 7,
        receiver: 8,
        message_id: 12,
        md5: String::new(),
        priority: 0,
        hold: true,
        token: String::new(),
        avatar: false,
    })
    .unwrap();
    assert_eq!(e.retry("r.bin").unwrap_err().code, Code::WrongState);
    e.cancel("r.bin").unwrap();
    assert_eq!(e.retry("nope").unwrap_err().code, Code::UnknownName);
    e.retry("r.bin").unwrap();
    drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "r.bin"),
    );
    assert!(std::fs::read(store.path().join("7").join("r.bin")).unwrap() == want);
    assert_eq!(e.retry("r.bin").unwrap_err().code, Code::WrongState);

    let dl = DownloadArgs {
        name: "d".into(),
        message_id: 12,
        uid: 8,
        token: String::new(),
        dest_dir: dest.path().to_str().unwrap().into(),
        md5: String::new(),
        priority: 0,
        avatar: None,
        known: None,
    };
    e.add_download(&dl).unwrap();
    e.cancel("d").unwrap();
    e.retry("d").unwrap();
    drive_until(
        &mut e,
        &mut sock,
        |ev| matches!(ev, Event::Completed { name, .. } if name == "d"),
    );
    assert!(std::fs::read(dest.path().join("r.bin")).unwrap() == want);

    // The wrong md5: fails at the end; resume starts it over.
    e.add_download(&DownloadArgs {
        name: "bad".into(),
        md5: "0".repeat(32),
        ..dl.clone()
    })
    .unwrap();
    e.start_download("bad").unwrap();
    let fails = |ev: &Event| matches!(ev, Event::Failed { name, .. } if name == "bad");
    drive_events(&mut e, &mut sock, fails, true);
    assert_eq!(e.status("bad").unwrap().state, FileState::Failed);
    e.resume("bad").unwrap();
    assert_eq!(e.status("bad").unwrap().state, FileState::Sending);
    drive_events(&mut e, &mut sock, fails, true);
    assert_eq!(e.status("bad").unwrap().state, FileState::Failed);
    // Neither failed attempt left anything but the good copy.
    let names: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, ["r.bin"]);
    rt.block_on(server.shutdown());
}
