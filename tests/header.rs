//! The committed C header (`include/chatxfer.h`, which C and C++ users
//! include) must be what cbindgen generates from the current
//! `src/ffi/capi.rs`; build.rs writes that to `$OUT_DIR/chatxfer.h`.

use std::path::PathBuf;

#[test]
fn committed_c_header_is_current() {
    let generated = std::fs::read_to_string(env!("CHATXFER_GENERATED_HEADER"))
        .expect("build.rs generated the header");
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/chatxfer.h"),
    )
    .expect("include/chatxfer.h exists");
    assert!(
        generated == committed,
        "include/chatxfer.h is stale: the C API changed. Regenerate it with \
         `CHATXFER_UPDATE_HEADER=1 cargo build` and commit it."
    );
}
