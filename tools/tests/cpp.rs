//! The C++ and C interfaces from the outside: builds `cpp-example/` with
//! CMake (a fresh build dir under the target dir; the crate itself is built
//! by cargo through `cmake/chatxfer.cmake`, a no-op here since `cargo test`
//! has just built it), then runs
//! * the C++ upload example against a real `chatxfer serve` process, through
//!   the networked `Client` and through the sans-IO `TransferEngine` (which
//!   also downloads the files back),
//! * the C program driving the C ABI's sans-IO engine (`tests/c/engine.c`),
//! * the same example built with AddressSanitizer (it starts its own server),
//! * the Qt Widgets demo's self-test, offscreen: uploads, pause/resume, a download back
//!   into an incoming bubble (screenshots under the build dir),
//! * the C program of bad calls (built with -Wall -Wextra -Werror).
//!
//! (That the committed C header is current is checked by the core's
//! `tests/header.rs`: only the core's build script generates it.)
//! Missing cmake or Qt fail these tests (with the install command); they
//! are never skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const INSTALL_HINT: &str = "the C++ checks need cmake, a C/C++ compiler and Qt 6: \
     run the install step of .ci/run (apt-get install -y cmake g++ qt6-base-dev fonts-dejavu-core)";

/// The workspace root (cpp-example/, include/ and cmake/ are there; this
/// package is tools/).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ is in the workspace root")
        .to_path_buf()
}

/// `<target dir>` and the profile directory (`debug`) cargo built into.
fn cargo_target() -> (PathBuf, String) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_chatxfer"));
    let profile_dir = exe.parent().expect("exe in a profile dir");
    let profile = profile_dir
        .file_name()
        .and_then(|s| s.to_str())
        .expect("profile dir name")
        .to_string();
    let target = profile_dir.parent().expect("profile dir in target").into();
    (target, profile)
}

fn build_dir() -> PathBuf {
    cargo_target().0.join("cpp-example-build")
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Configures and builds cpp-example once for all tests of this file.
fn built() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let t0 = Instant::now();
    match Command::new("cmake").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("cmake is not installed; {INSTALL_HINT}")),
    }
    let dir = build_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (target, profile) = cargo_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let configure = Command::new("cmake")
        .arg("-S")
        .arg(root().join("cpp-example"))
        .arg("-B")
        .arg(&dir)
        .arg("-DCMAKE_BUILD_TYPE=Debug")
        .arg(format!("-DCHATXFER_CARGO_TARGET_DIR={}", target.display()))
        .arg(format!("-DCHATXFER_PROFILE={profile}"))
        .arg(format!("-DCHATXFER_CARGO={cargo}"))
        .output()
        .map_err(|e| format!("cmake: {e}; {INSTALL_HINT}"))?;
    if !configure.status.success() {
        return Err(format!(
            "cmake configure failed ({INSTALL_HINT}):\n{}",
            show(&configure)
        ));
    }
    let make = Command::new("cmake")
        .arg("--build")
        .arg(&dir)
        .arg("-j2")
        .output()
        .map_err(|e| format!("cmake --build: {e}"))?;
    if !make.status.success() {
        return Err(format!("cmake --build failed:\n{}", show(&make)));
    }
    eprintln!(
        "cpp-example built in {:.1} s into {}",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// Deterministic bytes, so a mismatch is reproducible.
fn write_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// `chatxfer serve` on a free loopback port; stopped with SIGINT on drop.
struct Serve {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatxfer"))
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chatxfer serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("serve prints its address")
                .expect("stderr is readable");
            if let Some(rest) = line.split("serving on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, addr, dir }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[test]
fn cpp_upload_example_uploads_to_a_chatxfer_serve_process() {
    let dir = built();
    let server = Serve::start();
    let src = tempfile::tempdir().unwrap();
    let files = [
        ("photo.jpg", 8_000_000, 1),
        ("clip.mp4", 5_500_000, 2),
        ("note.txt", 12, 3),
    ];
    let mut args = vec![
        "--server".to_string(),
        server.addr.clone(),
        "--pause-first".into(),
    ];
    for (name, len, seed) in files {
        let p = src.path().join(name);
        write_file(&p, len, seed);
        args.push(p.display().to_string());
    }
    let t0 = Instant::now();
    let out = Command::new(dir.join("upload"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "upload failed:\n{}", show(&out));
    // Log lines are filtered at info (and reach the app, not stderr).
    assert!(
        stdout.lines().filter(|l| l.starts_with("log ")).all(|l| [
            "log INFO ",
            "log WARN ",
            "log ERROR "
        ]
        .iter()
        .any(|p| l.starts_with(p))),
        "{stdout}"
    );
    for (name, _, _) in files {
        assert!(
            stdout.contains(&format!("{name}: completed, ")),
            "no completion line for {name}:\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name}: ")) && l.contains(" bytes ")),
            "no progress line for {name}:\n{stdout}"
        );
        // Its log sink got the library's one info line per transfer.
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("log INFO chatxfer::engine")
                    && l.contains("upload complete")
                    && l.contains(&format!("name={name}"))),
            "no log line for {name}:\n{stdout}"
        );
        // The example's uid is 1001; the server stores <dir>/<uid>/<name>.
        let stored = std::fs::read(server.dir.path().join("1001").join(name)).unwrap();
        assert!(
            stored == std::fs::read(src.path().join(name)).unwrap(),
            "{name}: the stored copy differs"
        );
    }
    assert!(stdout.contains("photo.jpg: pause -> OK"), "{stdout}");
    eprintln!(
        "upload: 3 files to chatxfer serve at {} in {:.2} s",
        server.addr,
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn cpp_sans_io_engine_uploads_and_downloads_over_its_own_socket() {
    let dir = built();
    let server = Serve::start();
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let files = [("scan.png", 2_500_000, 6), ("song.mp3", 1_200_000, 7)];
    let mut args = vec![
        "--sans-io".to_string(),
        "--server".into(),
        server.addr.clone(),
        "--download-to".into(),
        dest.path().display().to_string(),
    ];
    for (name, len, seed) in files {
        let p = src.path().join(name);
        write_file(&p, len, seed);
        args.push(p.display().to_string());
    }
    let out = Command::new(dir.join("upload"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "upload --sans-io failed:\n{}",
        show(&out)
    );
    for (name, _, _) in files {
        let stored = std::fs::read(server.dir.path().join("1001").join(name)).unwrap();
        assert!(
            stored == std::fs::read(src.path().join(name)).unwrap(),
            "{name}: the stored copy differs"
        );
        // Downloaded back through the same engine and socket.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let saved = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("dl-{name}: saved ")))
            .unwrap_or_else(|| panic!("no saved line for {name}:\n{stdout}"));
        assert_eq!(Path::new(saved), dest.path().join(name));
        assert!(
            std::fs::read(saved).unwrap() == std::fs::read(src.path().join(name)).unwrap(),
            "{name}: the downloaded copy differs"
        );
    }
}

#[test]
fn cpp_upload_example_is_clean_under_address_sanitizer() {
    let dir = built();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.bin");
    let b = src.path().join("b.bin");
    write_file(&a, 4_000_000, 4);
    write_file(&b, 700_000, 5);
    // Without --server it starts `chatxfer serve` itself (the path CMake
    // compiled in). Leak detection stays on.
    let out = Command::new(dir.join("upload_asan"))
        .arg("--pause-first")
        .arg(&a)
        .arg(&b)
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "upload_asan failed:\n{}", show(&out));
    assert!(
        !stderr.contains("Sanitizer"),
        "sanitizer report:\n{}",
        show(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all files uploaded"));
}

#[test]
fn qt_demo_selftest_uploads_pauses_resumes_and_grabs_the_window() {
    let dir = built();
    let png = dir.join("chat-demo.png");
    let _ = std::fs::remove_file(&png);
    let t0 = Instant::now();
    let out = Command::new(dir.join("qt").join("chat_demo"))
        .arg("--selftest")
        .arg(&png)
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .unwrap();
    assert!(out.status.success(), "Qt self-test failed:\n{}", show(&out));
    let bytes = std::fs::read(&png).expect("the self-test wrote its screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" identical").count(), 5, "{stdout}");
    eprintln!(
        "Qt self-test passed in {:.2} s; screenshot {}",
        t0.elapsed().as_secs_f64(),
        png.display()
    );
}

#[test]
fn c_abi_bad_calls_give_error_results() {
    let dir = built();
    let out = Command::new(dir.join("bad_calls")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bad_calls failed:\n{}", show(&out));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    // Logs went to its callback; the library itself printed nothing.
    assert!(out.stderr.is_empty(), "{}", show(&out));
}

/// The C sans-IO engine (`chatxfer_engine_*`, tests/c/engine.c) over a
/// socket the C program owns: uploads a file to a `chatxfer serve` process,
/// downloads it back, and runs its bad calls. Checked here too: the stored
/// and the downloaded copies are the source's bytes.
#[test]
fn c_sans_io_engine_uploads_and_downloads_over_its_own_socket() {
    let dir = built();
    let server = Serve::start();
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let file = src.path().join("c-engine.bin");
    // Several chunks and a partial last one, so framing across reads and
    // the buffer cut in poll_transmit are exercised.
    write_file(&file, 3_000_017, 9);
    let (host, port) = server.addr.rsplit_once(':').expect("host:port");
    let out = Command::new(dir.join("engine_c"))
        .args([host, port])
        .arg(&file)
        .arg(dest.path())
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "engine_c failed:\n{}", show(&out));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let want = std::fs::read(&file).unwrap();
    let stored = std::fs::read(server.dir.path().join("1001").join("c-engine.bin")).unwrap();
    assert!(stored == want, "the stored copy differs");
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("saved "))
        .unwrap_or_else(|| panic!("no saved line:\n{stdout}"));
    assert_eq!(Path::new(saved), dest.path().join("c-engine.bin"));
    assert!(
        std::fs::read(saved).unwrap() == want,
        "the downloaded copy differs"
    );
    // The library printed nothing by itself (and AddressSanitizer, which
    // the program is built with, reported nothing).
    assert!(out.stderr.is_empty(), "{}", show(&out));
}
