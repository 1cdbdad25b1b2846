//! Builds the C++ bridge (`src/ffi/bridge.rs` + `src/ffi/sink.cc`) with
//! cxx-build, and generates the C header of `src/ffi/capi.rs` with cbindgen.
//!
//! The C header is generated into `$OUT_DIR/chatxfer.h` on every build; the
//! committed `include/chatxfer.h` is rewritten only when
//! `CHATXFER_UPDATE_HEADER=1` is set, so that a build never edits the
//! source tree behind anyone's back and `tests/header.rs` can fail when the
//! committed header is stale (it compares the two files).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));

    // `include!("chatxfer_sink.h")` in the bridge resolves through include/
    // (dependents add it too: `cmake/chatxfer.cmake`).
    cxx_build::bridge("src/ffi/bridge.rs")
        .include(root.join("include"))
        .file("src/ffi/sink.cc")
        .std("c++17")
        .flag_if_supported("-Wall")
        .compile("chatxfer-cxx");

    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is readable");
    let generated = out.join("chatxfer.h");
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/capi.rs"))
        .generate()
        .expect("cbindgen can parse src/ffi/capi.rs")
        .write_to_file(&generated);
    if std::env::var_os("CHATXFER_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::copy(&generated, root.join("include/chatxfer.h"))
            .expect("include/chatxfer.h is writable");
    }
    // For the staleness check in tests/header.rs.
    println!(
        "cargo:rustc-env=CHATXFER_GENERATED_HEADER={}",
        generated.display()
    );

    for f in [
        "src/ffi/bridge.rs",
        "src/ffi/sink.cc",
        "src/ffi/capi.rs",
        "include/chatxfer_sink.h",
        "cbindgen.toml",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CHATXFER_UPDATE_HEADER");
}
