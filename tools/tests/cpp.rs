//! The C++ and C interfaces from the outside, built the ways an app builds
//! them (the crate itself is built by cargo through the shared cargo step,
//! `cmake/chatxfer-cargo.cmake`; fresh here since `cargo test` has just
//! built it, apart from one `cargo rustc` of the core):
//! * the installable CMake package (`cmake/`), built and installed once
//!   under the target dir; its recorded link line must be the one rustc
//!   prints;
//! * `cpp-example/` in-tree (`include(cmake/chatxfer.cmake)`), then runs
//!   the C++ upload example against a real `chatxfer serve` process (the
//!   networked `Client` and the sans-IO `TransferEngine`, which also
//!   downloads the files back), the same example under AddressSanitizer,
//!   the C program of bad calls, the C program driving the C ABI's sans-IO
//!   engine (`tests/c/engine.c`), and the header checks at the client's
//!   standards (C++11, C99, warnings as errors; the Qt adapter with Qt 5
//!   as C++11, and one of its signals on the object's thread); the chat
//!   client's whole sequence (`client_flow.cpp`) against in-process
//!   servers; the example killed mid-upload and mid-download, then resumed
//!   by a new process; the Qt adapter destroyed mid-upload under
//!   AddressSanitizer;
//! * the Qt Widgets demo four ways, CMake package (`find_package`,
//!   `chatxfer::qt`) and qmake (`qmake/chatxfer_qt.pri`), each with Qt 5
//!   and Qt 6, and its self-test offscreen through the Qt adapter
//!   (uploads, pause/resume, a download back that fails and is retried by
//!   a click, md5s, every signal on the GUI thread, screenshots under the
//!   build dir);
//! * the profile/library choice for a release configuration (configure
//!   only: a release build of the crate would take minutes).
//!
//! (That the committed C header is current is checked by the core's
//! `tests/header.rs`: only the core's build script generates it.)
//! Missing cmake, qmake or Qt fail these tests (with the install command);
//! they are never skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const INSTALL_HINT: &str = "the C++ checks need cmake, make, a C/C++ compiler, Qt 6 and Qt 5 \
     (with qmake6 and qmake): run the install step of .ci/run \
     (apt-get install -y cmake make g++ qt6-base-dev qtbase5-dev fonts-dejavu-core)";

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
    // After the package: one cargo step at a time writes the shared files
    // (library, response file) of the target dir.
    package();
    let t0 = Instant::now();
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
        // The Qt demo is built by the package and qmake tests below.
        .arg("-DCHATXFER_EXAMPLE_QT=OFF")
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
        .arg("-j1")
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

/// Runs `cmd`, an error with its output unless it succeeds.
fn run(what: &str, cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: {e}; {INSTALL_HINT}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({INSTALL_HINT}):\n{}", show(&out)));
    }
    Ok(out)
}

/// The CMake package: `cmake/` configured for Debug, built (cargo) and
/// installed once; returns the prefix.
fn package() -> &'static Path {
    static PACKAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PACKAGE.get_or_init(build_package) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build_package() -> Result<PathBuf, String> {
    let t0 = Instant::now();
    match Command::new("cmake").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("cmake is not installed; {INSTALL_HINT}")),
    }
    let (target, profile) = cargo_target();
    let build = target.join("chatxfer-package-build");
    let prefix = target.join("chatxfer-package");
    for d in [&build, &prefix] {
        let _ = std::fs::remove_dir_all(d);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        "cmake configure of cmake/ (the package)",
        Command::new("cmake")
            .arg("-S")
            .arg(root().join("cmake"))
            .arg("-B")
            .arg(&build)
            .arg("-DCMAKE_BUILD_TYPE=Debug")
            .arg(format!("-DCHATXFER_CARGO_TARGET_DIR={}", target.display()))
            .arg(format!("-DCHATXFER_PROFILE={profile}"))
            .arg(format!("-DCHATXFER_CARGO={cargo}")),
    )?;
    run(
        "cmake --build (the package)",
        Command::new("cmake").arg("--build").arg(&build).arg("-j1"),
    )?;
    run(
        "cmake --install (the package)",
        Command::new("cmake")
            .arg("--install")
            .arg(&build)
            .arg("--prefix")
            .arg(&prefix),
    )?;
    eprintln!(
        "package built and installed in {:.1} s into {}",
        t0.elapsed().as_secs_f64(),
        prefix.display()
    );
    Ok(prefix)
}

/// How the Qt demo is built.
#[derive(Clone, Copy, Debug)]
enum QtBuild {
    /// `find_package(chatxfer CONFIG)` against the installed package.
    Package,
    /// `qmake` + `include(qmake/chatxfer.pri)`.
    Qmake,
}

/// The qmake of Qt `major` (Debian: qmake is qtchooser's, Qt 5 by default;
/// CHATXFER_QMAKE5 / CHATXFER_QMAKE6 override).
fn qmake(major: u32) -> String {
    let default = if major == 5 { "qmake" } else { "qmake6" };
    std::env::var(format!("CHATXFER_QMAKE{major}")).unwrap_or_else(|_| default.into())
}

/// Builds the Qt demo with Qt `major` the given way into a fresh dir under
/// the target dir; returns the executable.
fn build_qt_demo(how: QtBuild, major: u32) -> Result<PathBuf, String> {
    let prefix = package();
    let t0 = Instant::now();
    let (target, profile) = cargo_target();
    let dir = target.join(format!("qt-demo-{how:?}-qt{major}").to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = root().join("cpp-example").join("qt");
    let command = env!("CARGO_BIN_EXE_chatxfer");
    match how {
        QtBuild::Package => {
            run(
                "cmake configure of cpp-example/qt",
                Command::new("cmake")
                    .arg("-S")
                    .arg(&src)
                    .arg("-B")
                    .arg(&dir)
                    .arg("-DCMAKE_BUILD_TYPE=Debug")
                    .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
                    .arg(format!("-DCHATXFER_QT_VERSION={major}"))
                    .arg(format!("-DCHATXFER_COMMAND_PATH={command}")),
            )?;
            run(
                "cmake --build cpp-example/qt",
                Command::new("cmake").arg("--build").arg(&dir).arg("-j1"),
            )?;
        }
        QtBuild::Qmake => {
            let qmake = qmake(major);
            let version = run(&qmake, Command::new(&qmake).args(["-query", "QT_VERSION"]))?;
            let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
            if !version.starts_with(&format!("{major}.")) {
                return Err(format!(
                    "{qmake} is Qt {version}, not Qt {major}; set CHATXFER_QMAKE{major}"
                ));
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(
                &qmake,
                Command::new(&qmake)
                    .current_dir(&dir)
                    .arg("CONFIG+=debug")
                    .arg(format!("CHATXFER_CARGO_TARGET_DIR={}", target.display()))
                    .arg(format!("CHATXFER_PROFILE={profile}"))
                    .arg(format!("CHATXFER_CARGO={cargo}"))
                    .arg(format!("CHATXFER_COMMAND_PATH={command}"))
                    .arg(src.join("chat_demo.pro")),
            )?;
            run("make", Command::new("make").current_dir(&dir).arg("-j1"))?;
        }
    }
    eprintln!(
        "Qt demo ({how:?}, Qt {major}) built in {:.1} s into {}",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir.join("chat_demo"))
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
        Serve::start_with(&[])
    }

    /// `chatxfer serve` with more options (e.g. `--appending`).
    fn start_with(extra: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatxfer"))
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path())
            .args(extra)
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
    // ...a connection line among them.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("log INFO chatxfer::runtime")
                && l.contains("connected to the resource server")),
        "no connection log line:\n{stdout}"
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

/// The Qt adapter destroyed while its client is mid-upload, round after
/// round (deleteLater from its own progress slot; the last round in a
/// worker thread, whose signals must arrive there), under AddressSanitizer:
/// the library's sink racing the destructor must touch nothing freed.
#[test]
fn qt_adapter_destroyed_mid_upload_is_clean_under_address_sanitizer() {
    let dir = built();
    let server = Serve::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("lifetime.bin");
    // Large enough that every round is still sending when it is destroyed.
    write_file(&file, 24_000_000, 11);
    let (host, port) = server.addr.rsplit_once(':').expect("host:port");
    let out = Command::new(dir.join("qt_lifetime"))
        .args([host, port])
        .arg(&file)
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "qt_lifetime failed:\n{}", show(&out));
    assert!(
        stdout.contains(
            "rounds 8, destroyed mid-upload 8, destroyed 8, signals on a wrong thread 0: ok"
        ),
        "{stdout}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Sanitizer"),
        "sanitizer report:\n{}",
        show(&out)
    );
}

/// Builds the demo, runs its self-test offscreen and checks what it says.
fn qt_demo_selftest(how: QtBuild, major: u32) {
    let exe = build_qt_demo(how, major).unwrap_or_else(|e| panic!("{e}"));
    let png = exe.with_file_name("chat-demo.png");
    let t0 = Instant::now();
    let out = Command::new(&exe)
        .arg("--selftest")
        .arg(&png)
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Qt self-test ({how:?}, Qt {major}) failed:\n{}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("built with Qt {major}.")),
        "not a Qt {major} build:\n{stdout}"
    );
    let bytes = std::fs::read(&png).expect("the self-test wrote its screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    // Five uploads with the source's md5, one download byte-identical.
    assert_eq!(stdout.matches(" identical").count(), 5, "{stdout}");
    assert_eq!(stdout.matches(" byte-identical").count(), 1, "{stdout}");
    // Through the adapter's signals, all on the GUI thread; the download's
    // failure (Failure::Local, 2004: a file where its folder should be)
    // retried by a click.
    assert!(
        stdout.contains("download of sunset.png failed (code 2004)")
            && stdout.contains("failed download shown and retried by a click: yes"),
        "{stdout}"
    );
    assert!(stdout.contains("; off the GUI thread: 0\n"), "{stdout}");
    eprintln!(
        "Qt self-test ({how:?}, Qt {major}) passed in {:.2} s; screenshot {}",
        t0.elapsed().as_secs_f64(),
        png.display()
    );
}

#[test]
fn qt6_demo_built_against_the_cmake_package_passes_its_selftest() {
    qt_demo_selftest(QtBuild::Package, 6);
}

#[test]
fn qt5_demo_built_against_the_cmake_package_passes_its_selftest() {
    qt_demo_selftest(QtBuild::Package, 5);
}

#[test]
fn qt6_demo_built_with_qmake_passes_its_selftest() {
    qt_demo_selftest(QtBuild::Qmake, 6);
}

#[test]
fn qt5_demo_built_with_qmake_passes_its_selftest() {
    qt_demo_selftest(QtBuild::Qmake, 5);
}

/// The items of rustc's `native-static-libs:` note for the core, as rustc
/// prints it for this build (cargo replays the note when the crate is fresh).
fn rustc_native_static_libs() -> Vec<String> {
    let (target, profile) = cargo_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("rustc")
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .args(["-p", "chatxfer", "--lib"])
        .env("CARGO_TARGET_DIR", &target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let out = run(
        "cargo rustc --print native-static-libs",
        cmd.args(["--", "--print", "native-static-libs"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.split("native-static-libs: ").nth(1))
        .unwrap_or_else(|| panic!("no native-static-libs note:\n{stderr}"));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn link_lines_are_what_rustc_printed() {
    let prefix = package();
    let dir = built();
    let want = rustc_native_static_libs();
    assert!(
        want.iter().any(|l| l == "-lstdc++"),
        "the cxx bridge needs the C++ library: {want:?}"
    );
    // The installed package recorded the list of its (Debug) build...
    let (target, profile) = cargo_target();
    let targets =
        std::fs::read_to_string(prefix.join("lib/cmake/chatxfer/chatxferTargets-DEBUG.cmake"))
            .unwrap();
    let recorded = targets
        .lines()
        .find_map(|l| l.strip_prefix("set(_chatxfer_native_DEBUG \""))
        .and_then(|l| l.strip_suffix("\")"))
        .unwrap_or_else(|| panic!("no native list in:\n{targets}"));
    assert_eq!(recorded.split(';').collect::<Vec<_>>(), want);
    assert!(prefix.join("lib/libchatxferd.a").is_file());
    // ...and the in-tree build links the response file written by the same
    // step, after the library.
    let rsp = target.join(&profile).join("chatxfer-native-libs.rsp");
    let items: Vec<String> = std::fs::read_to_string(&rsp)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(items, want);
    let link = std::fs::read_to_string(dir.join("CMakeFiles/upload.dir/link.txt")).unwrap();
    let lib = target.join(&profile).join("libchatxfer.a");
    let at_lib = link
        .find(&lib.display().to_string())
        .unwrap_or_else(|| panic!("{} not in {link}", lib.display()));
    let at_rsp = link
        .find(&format!("-Wl,@{}", rsp.display()))
        .unwrap_or_else(|| panic!("-Wl,@{} not in {link}", rsp.display()));
    assert!(at_lib < at_rsp, "{link}");
    // No list written down anywhere else.
    assert!(!link.contains("-lutil"), "{link}");
}

#[test]
fn release_configurations_choose_the_release_profile() {
    // Configure only (a release build of the crate takes minutes): the
    // generated build files name cargo's release dir.
    let (target, _) = cargo_target();
    let dir = target.join("chatxfer-package-release-configure");
    let _ = std::fs::remove_dir_all(&dir);
    run(
        "cmake configure of cmake/ for RelWithDebInfo",
        Command::new("cmake")
            .arg("-S")
            .arg(root().join("cmake"))
            .arg("-B")
            .arg(&dir)
            .arg("-DCMAKE_BUILD_TYPE=RelWithDebInfo")
            .arg(format!("-DCHATXFER_CARGO_TARGET_DIR={}", target.display())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut generated = String::new();
    for f in [
        "CMakeFiles/chatxfer_cargo.dir/build.make",
        "cmake_install.cmake",
    ] {
        generated += &std::fs::read_to_string(dir.join(f)).unwrap();
    }
    assert!(generated.contains("-DPROFILE=release"), "{generated}");
    assert!(
        generated.contains(&format!("{}/release/libchatxfer.a", target.display())),
        "{generated}"
    );
    assert!(generated.contains("libchatxfer.a"), "{generated}");

    let qdir = target.join("qmake-release-configure");
    let _ = std::fs::remove_dir_all(&qdir);
    std::fs::create_dir_all(&qdir).unwrap();
    let qmake = qmake(6);
    run(
        &qmake,
        Command::new(&qmake)
            .current_dir(&qdir)
            .arg("CONFIG+=release")
            .arg(format!("CHATXFER_CARGO_TARGET_DIR={}", target.display()))
            .arg(root().join("cpp-example/qt/chat_demo.pro")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let makefile = std::fs::read_to_string(qdir.join("Makefile")).unwrap();
    assert!(makefile.contains("-DPROFILE=release"), "{makefile}");
    let lib = format!("{}/release/libchatxfer.a", target.display());
    let rsp = format!("-Wl,@{}/release/chatxfer-native-libs.rsp", target.display());
    let libs = makefile
        .lines()
        .find(|l| l.starts_with("LIBS "))
        .expect("a LIBS line");
    assert!(libs.contains(&lib) && libs.contains(&rsp), "{libs}");
}

/// What qmake's compiler probe would have cached, so that Qt 5's qmake
/// writes Makefiles for a Windows spec on this Linux machine (nothing is
/// compiled: this checks the .pri's Windows branches, not a Windows build).
const WINDOWS_STASH: &str = "\
QMAKE_CXX.QMAKE_MSC_VER = 1929
QMAKE_CXX.QMAKE_MSC_FULL_VER = 192930133
QMAKE_CXX.QT_COMPILER_STDCXX = 201402L
QMAKE_CXX.QMAKE_GCC_MAJOR_VERSION = 12
QMAKE_CXX.QMAKE_GCC_MINOR_VERSION = 2
QMAKE_CXX.QMAKE_GCC_PATCH_VERSION = 0
QMAKE_CXX.COMPILER_MACROS = QMAKE_MSC_VER QMAKE_MSC_FULL_VER QT_COMPILER_STDCXX \
QMAKE_GCC_MAJOR_VERSION QMAKE_GCC_MINOR_VERSION QMAKE_GCC_PATCH_VERSION
QMAKE_CXX.INCDIRS = C:/toolchain/include
QMAKE_CXX.LIBDIRS = C:/toolchain/lib
";

#[test]
fn qmake_pri_writes_the_msvc_and_mingw_link_lines() {
    let (target, _) = cargo_target();
    let pro = root().join("cpp-example/qt/chat_demo.pro");
    let qmake = qmake(5);
    // MSVC, debug_and_release as on Windows: one Makefile per configuration.
    let dir = target.join("qmake-spec-win32-msvc");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".qmake.stash"), WINDOWS_STASH).unwrap();
    run(
        "qmake -spec win32-msvc",
        Command::new(&qmake)
            .current_dir(&dir)
            .args(["-spec", "win32-msvc", "CONFIG+=debug_and_release"])
            .arg(&pro),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cargo_dir = dir.join("chatxfer-cargo");
    for (makefile, profile, runtime) in [
        ("Makefile.Debug", "debug", "MDd"),
        ("Makefile.Release", "release", "MD"),
    ] {
        let text = std::fs::read_to_string(dir.join(makefile)).unwrap();
        let out = format!("{}/{profile}", cargo_dir.display());
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {makefile}"))
                .to_string()
        };
        assert!(
            line("LIBS ").contains(&format!("{out}/chatxfer.lib")),
            "{makefile}: {}",
            line("LIBS ")
        );
        let lflags = line("LFLAGS ");
        assert!(
            lflags.contains(&format!("@{out}/chatxfer-native-libs.rsp")),
            "{makefile}: {lflags}"
        );
        assert_eq!(
            lflags.contains("/NODEFAULTLIB:msvcrt.lib"),
            runtime == "MDd",
            "{makefile}: {lflags}"
        );
        assert!(
            text.contains(&format!("-DPROFILE={profile} "))
                && text.contains(&format!("-DMSVC_RUNTIME={runtime} ")),
            "{makefile}: the cargo step's arguments"
        );
    }
    // MinGW: the gnu target, libchatxfer.a, the response file after it.
    let dir = target.join("qmake-spec-win32-g++");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".qmake.stash"), WINDOWS_STASH).unwrap();
    run(
        "qmake -spec win32-g++",
        Command::new(&qmake)
            .current_dir(&dir)
            .args([
                "-spec",
                "win32-g++",
                "CONFIG+=debug",
                "CONFIG-=debug_and_release",
            ])
            .arg(&pro),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(dir.join("Makefile")).unwrap();
    let out = format!(
        "{}/x86_64-pc-windows-gnu/debug",
        dir.join("chatxfer-cargo").display()
    );
    let libs = text
        .lines()
        .find(|l| l.starts_with("LIBS "))
        .expect("a LIBS line");
    let lib = libs
        .find(&format!("{out}/libchatxfer.a"))
        .unwrap_or_else(|| panic!("{libs}"));
    let rsp = libs
        .find(&format!("-Wl,@{out}/chatxfer-native-libs.rsp"))
        .unwrap_or_else(|| panic!("{libs}"));
    assert!(lib < rsp, "{libs}");
    assert!(
        text.contains("-DRUST_TARGET=x86_64-pc-windows-gnu "),
        "{text}"
    );
    assert!(!text.contains("MSVC_RUNTIME=MD"), "{text}");
}

#[test]
fn headers_compile_as_cxx11_and_c99_and_link() {
    let dir = built();
    for (exe, ok) in [
        ("headers_cxx11", "c++11 headers: ok"),
        ("header_c99", "c99 header: ok"),
    ] {
        let out = Command::new(dir.join(exe)).output().unwrap();
        assert!(out.status.success(), "{exe} failed:\n{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(ok),
            "{}",
            show(&out)
        );
    }
    // They were compiled at those standards, with warnings as errors.
    for (flags, std) in [
        ("CMakeFiles/headers_cxx11.dir/flags.make", "-std=c++11"),
        ("CMakeFiles/header_c99.dir/flags.make", "-std=c99"),
        ("CMakeFiles/headers_qt_cxx11.dir/flags.make", "-std=c++11"),
    ] {
        let text = std::fs::read_to_string(dir.join(flags)).unwrap();
        assert!(
            text.contains(std) && text.contains("-Werror"),
            "{flags}: {text}"
        );
    }
    // The adapter's moc output was part of that C++11 build, against Qt 5.
    let mocs =
        std::fs::read_to_string(dir.join("headers_qt_cxx11_autogen/mocs_compilation.cpp")).unwrap();
    assert!(mocs.contains("moc_chatxfer_qt.cpp"), "{mocs}");
    // Its signals (md5, connection, avatar up and down) on the object's
    // thread, against a `chatxfer serve`.
    let server = Serve::start();
    let work = tempfile::tempdir().unwrap();
    let (host, port) = server.addr.rsplit_once(':').expect("host:port");
    let out = Command::new(dir.join("headers_qt_cxx11"))
        .args([host, port])
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "headers_qt_cxx11 failed:\n{}",
        show(&out)
    );
    assert!(
        stdout.contains("built with Qt 5.")
            && stdout.contains("avatar saved, routed by its request, bytes identical: ok")
            && stdout.contains("qt adapter c++11: ok"),
        "{stdout}"
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

/// Polls (every 20 ms, at most 120 s) until `ready` finds what it waits
/// for, while `child` must still be running; then kills `child`.
fn kill_when<T>(child: &mut Child, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let found = loop {
        if let Some(found) = ready() {
            break found;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    found
}

/// A JSON file (a journal) as it is now, if it exists and parses.
fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The C++ client killed mid-upload (SIGKILL: no shutdown, no drain) and
/// started again with `--resume` continues from its journal and the stored
/// file is byte-identical — against the positional reference server and
/// against it in the deployed server's appending mode, where nothing may be
/// appended twice.
#[test]
fn cpp_client_killed_mid_upload_resumes_after_a_restart() {
    let dir = built();
    for appending in [false, true] {
        let server = Serve::start_with(if appending { &["--appending"] } else { &[] });
        let work = tempfile::tempdir().unwrap();
        let state = work.path().join("state");
        let src = work.path().join("trip.mp4");
        write_file(&src, 24_000_000, 21);
        let mut args = vec![
            "--server".to_string(),
            server.addr.clone(),
            "--state-dir".into(),
            state.display().to_string(),
            // Slow enough to be killed half-way on any machine.
            "--rate-limit".into(),
            "4000000".into(),
        ];
        if appending {
            args.push("--appending".into());
        }
        let mut first = Command::new(dir.join("upload"))
            .args(&args)
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed once its journal records acknowledged chunks.
        let journal = state.join("trip.mp4.journal.json");
        kill_when(&mut first, "journal progress", || {
            let acked = read_json(&journal).and_then(|v| v["acked_prefix"].as_u64());
            acked.filter(|&a| a >= 20)
        });

        let mut resume = args.clone();
        resume.truncate(4); // --server, --state-dir: no rate limit now
        if appending {
            resume.push("--appending".into());
        }
        resume.push("--resume".into());
        let out = Command::new(dir.join("upload"))
            .args(&resume)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "resume failed:\n{}", show(&out));
        assert!(
            stdout.contains("trip.mp4: resumable upload"),
            "nothing offered:\n{stdout}"
        );
        assert!(stdout.contains("trip.mp4: completed"), "{stdout}");
        let stored = std::fs::read(server.dir.path().join("1001").join("trip.mp4")).unwrap();
        assert!(
            stored == std::fs::read(&src).unwrap(),
            "stored copy differs (appending: {appending})"
        );
        assert!(
            !journal.exists(),
            "the journal of a completed upload was kept"
        );
    }
}

/// The chat client's whole sequence through the C++ API
/// (`cpp-example/client_flow.cpp`: the md5 before the announce, registered
/// at send and started with the 1036 id, pause and resume, a failure
/// retried, an avatar up and down routed by its request, a received picture
/// from the 1039 notify, a logout mid-upload and a re-login to another
/// server), against the reference server in both storage modes. This side
/// plays the servers: at the program's "LOGOUT" the first one goes away and
/// a second one on another port, over the same store, takes its place. Every
/// stored and downloaded copy must be byte-identical to its source, and
/// neither server may have seen a 1045.
#[test]
fn cpp_client_walks_the_chat_clients_whole_sequence() {
    use chatxfer_tools::server::{self, ServerConfig, Storage};
    use std::io::Write;
    let dir = built();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for storage in [Storage::Positional, Storage::AppendStrict] {
        let store = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let config = || {
            let mut c = ServerConfig::new(store.path());
            c.storage = storage;
            c
        };
        let first = rt.block_on(server::start("127.0.0.1:0", config())).unwrap();
        let mut cmd = Command::new(dir.join("client_flow"));
        cmd.arg("127.0.0.1")
            .arg(first.local_addr().port().to_string())
            .arg(work.path());
        if storage == Storage::AppendStrict {
            cmd.arg("--appending");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut out = Vec::new();
        let mut first = Some(first);
        let mut second = None;
        let mut info_requests = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            out.push(line.clone());
            if line == "LOGOUT" {
                // The old server is gone; the re-login names another one.
                let old = first.take().expect("one logout");
                info_requests += old.stats().message_info_requests;
                rt.block_on(old.shutdown());
                let new = rt.block_on(server::start("127.0.0.1:0", config())).unwrap();
                writeln!(stdin, "PORT {}", new.local_addr().port()).unwrap();
                stdin.flush().unwrap();
                second = Some(new);
            }
        }
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        let out = out.join("\n");
        assert!(
            status.success() && out.ends_with("DONE"),
            "client_flow ({storage:?}) failed:\n{out}\nstderr:\n{stderr}"
        );
        assert!(stderr.is_empty(), "the library wrote to stderr: {stderr}");
        let second = second.expect("the program logged out");
        info_requests += second.stats().message_info_requests;
        assert_eq!(info_requests, 0, "a 1045 was sent ({storage:?})");
        assert_eq!(second.violations(), 0, "appended twice ({storage:?})");
        let src = |name: &str| std::fs::read(work.path().join("src").join(name)).unwrap();
        for (uid, name) in [
            (1001, "photo.jpg"),
            (1001, "video.mp4"),
            (1001, "doc.pdf"),
            (1001, "movie.mp4"),
            (2002, "beach.jpg"),
        ] {
            let stored = store.path().join(uid.to_string()).join(name);
            assert!(
                std::fs::read(&stored).ok() == Some(src(name)),
                "{} differs from its source ({storage:?})",
                stored.display()
            );
        }
        for (download, source) in [("self-icon", "me.png"), ("beach-received", "beach.jpg")] {
            let path = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("saved {download} ")))
                .unwrap_or_else(|| panic!("no path for {download}:\n{out}"));
            assert!(
                std::fs::read(path).unwrap() == src(source),
                "{download} differs from {source} ({storage:?})"
            );
        }
        rt.block_on(second.shutdown());
    }
}

/// A download survives an app restart through C++: the example, downloading
/// a 24 MB chat file over an emulated slow link with a state directory, is
/// killed once its partial file holds megabytes; a new process lists the
/// journaled download, resumes it (from the start: a killed process's
/// partial file is not trusted) and saves a byte-identical copy, leaving no
/// partial file or journal. Against the reference server in both storage
/// modes (downloads read the same way from either).
#[test]
fn cpp_client_killed_mid_download_resumes_after_a_restart() {
    use chatxfer_tools::linkemu::{LinkConfig, LinkEmulator};
    use chatxfer_tools::server::{self, MessageInfo, ServerConfig, Storage};
    let dir = built();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for storage in [Storage::Positional, Storage::AppendStrict] {
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("2002")).unwrap();
        let src = store.path().join("2002").join("film.mp4");
        write_file(&src, 24_000_000, 33);
        let mut config = ServerConfig::new(store.path());
        config.storage = storage;
        let srv = rt.block_on(server::start("127.0.0.1:0", config)).unwrap();
        srv.register_message(31, MessageInfo::new(2002, 1001, "film.mp4"))
            .unwrap();
        // 32 Mbit/s: about 8 s for the whole file, so the kill lands mid-way.
        let slow = rt
            .block_on(LinkEmulator::start(
                "127.0.0.1:0",
                srv.local_addr(),
                LinkConfig {
                    rate_bits_per_sec: Some(32_000_000),
                    ..LinkConfig::default()
                },
            ))
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        let state = work.path().join("state");
        let dl = work.path().join("dl");
        std::fs::create_dir_all(&dl).unwrap();
        let mut first = Command::new(dir.join("upload"))
            .args(["--server", &slow.local_addr().to_string(), "--state-dir"])
            .arg(&state)
            .arg("--download-to")
            .arg(&dl)
            .args(["--fetch", "31"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let journal = state.join("msg-31.download.json");
        let part = kill_when(&mut first, "partial download", || {
            let part = read_json(&journal).and_then(|v| v["part"].as_str().map(PathBuf::from));
            part.filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 2 << 20))
        });
        assert!(part.exists(), "the killed run's partial file");

        let out = Command::new(dir.join("upload"))
            .args(["--server", &srv.local_addr().to_string(), "--state-dir"])
            .arg(&state)
            .arg("--resume")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "resume failed:\n{}", show(&out));
        assert!(
            stdout.contains("msg-31: resumable download"),
            "nothing offered:\n{stdout}"
        );
        let saved = stdout
            .lines()
            .find_map(|l| l.strip_prefix("msg-31: saved "))
            .unwrap_or_else(|| panic!("not saved:\n{stdout}"));
        assert!(
            std::fs::read(saved).unwrap() == std::fs::read(&src).unwrap(),
            "the downloaded copy differs ({storage:?})"
        );
        assert_eq!(Path::new(saved).parent(), Some(dl.as_path()));
        assert!(!part.exists(), "the stale partial file was left");
        assert!(
            !journal.exists(),
            "the journal of a finished download was kept"
        );
        drop(slow);
        rt.block_on(srv.shutdown());
    }
}
