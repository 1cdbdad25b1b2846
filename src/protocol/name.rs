//! The one rule for file names, shared by the client and the reference server.
//!
//! A name travels in every upload chunk and becomes one path component: under
//! `<dir>/<uid>/` on the server, and under the destination directory of a
//! download on the client, where the *server* chooses it. One rule serves
//! both sides so they cannot disagree: the client never uploads a name the
//! server would refuse (with a misleading error), and never refuses to
//! download a name the server stored.
//!
//! Refused: empty names; names over [`MAX_NAME_LEN`] bytes (with the server's
//! `.part`/`.state.tmp` affixes a component stays under the usual 255-byte
//! limit); path separators (`/`, `\`), NUL and other control characters
//! (terminal escapes in a printed name); `..`; a leading `.` (the server's own
//! hidden files, and dot files such as `.bashrc` in a download folder); `:`
//! (a drive-relative path or an alternate data stream on Windows).

/// Longest accepted file name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Why `name` cannot be a transfer's file name, or `None` if it can.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 200 bytes")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("contains NUL or a control character")
    } else if name.contains("..") {
        Some("contains `..`")
    } else if name.starts_with('.') {
        Some("starts with `.` (hidden and server-reserved files)")
    } else if name.contains(':') {
        Some("contains `:` (a drive or stream on Windows)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            "..",
            ".",
            "/etc/passwd",
            "a\0b",
            "C:x",
            ".bashrc",
            "a\u{1b}[31mred",
            "tab\tname",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        for good in [
            "photo 1.png",
            "3f2a-1.mp4",
            "名字.txt",
            "a.b.c",
            &"n".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(name_problem(good), None, "{good:?}");
        }
    }
}
