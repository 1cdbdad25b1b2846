//! Unit tests of the foreign layers' Rust side. Those that need the
//! reference server are in `tools/tests/ffi.rs`; the C, C++ and CMake sides
//! are exercised by `tools/tests/cpp.rs`.

use super::*;

/// The numbers themselves are checked at compile time (cxx enums) and are
/// the ABI; this checks what the table's expansion derives from them.
#[test]
fn every_table_enum_round_trips_through_its_number_name_and_description() {
    fn check<T: Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        number: impl Fn(T) -> u32,
        from: impl Fn(u32) -> Option<T>,
        name: impl Fn(T) -> &'static str,
        description: impl Fn(T) -> &'static str,
    ) {
        let mut names = std::collections::HashSet::new();
        for &v in all {
            assert_eq!(from(number(v)), Some(v));
            assert!(names.insert(name(v)), "{v:?}: name used twice");
            assert!(
                !name(v).is_empty()
                    && name(v)
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit()),
                "{v:?}"
            );
            assert!(description(v).ends_with('.'), "{v:?}: {:?}", description(v));
            assert!(!description(v).starts_with(' '), "{v:?}");
        }
        assert_eq!(from(4242), None);
    }
    check(
        Code::ALL,
        |v| v as u32,
        Code::from_u32,
        Code::name,
        Code::description,
    );
    check(
        XferState::ALL,
        |v| v as u32,
        XferState::from_u32,
        XferState::name,
        XferState::description,
    );
    check(
        EventKind::ALL,
        |v| v as u32,
        EventKind::from_u32,
        EventKind::name,
        EventKind::description,
    );
    check(
        LogLevel::ALL,
        |v| v as u32,
        LogLevel::from_u32,
        LogLevel::name,
        LogLevel::description,
    );
    check(
        FailureCode::ALL,
        |v| v as u32,
        FailureCode::from_u32,
        FailureCode::name,
        FailureCode::description,
    );
    assert_eq!(Code::ALL.len(), 17);
    assert_eq!(Code::NullParameter as u32, 1);
    assert_eq!(Code::Panic as u32, 15);
    assert_eq!(FailureCode::Local as u32, 2004);
    // The C accessors agree with the Rust ones.
    let name = unsafe { std::ffi::CStr::from_ptr(capi::chatxfer_result_name(12)) };
    assert_eq!(name.to_str().unwrap(), "SHUT_DOWN");
    let unknown = unsafe { std::ffi::CStr::from_ptr(capi::chatxfer_result_name(99)) };
    assert_eq!(unknown.to_str().unwrap(), "UNKNOWN");
    let text = unsafe { std::ffi::CStr::from_ptr(capi::chatxfer_result_description(1)) };
    assert_eq!(text.to_str().unwrap(), "A pointer argument was NULL.");
    let status: bridge::ffi::Status = Code::WrongState.into();
    assert_eq!(status.repr, 9);
}

#[test]
fn a_panic_becomes_the_panic_code_and_the_last_error() {
    let r: FfiResult<()> = boundary(|| panic!("boom in a test"));
    assert_eq!(r.unwrap_err().code, Code::Panic);
    assert!(last_error().contains("boom in a test"), "{}", last_error());
    let ok: FfiResult<u8> = boundary(|| Ok(1));
    assert_eq!(ok.unwrap(), 1);
    assert_eq!(last_error(), "", "a success clears the last error");
}

#[test]
fn client_refuses_calls_before_connect_and_after_shutdown() {
    let t = Client::new(None);
    assert_eq!(t.pause("x").unwrap_err().code, Code::NotConnected);
    assert_eq!(t.connect("", 1).unwrap_err().code, Code::InvalidArgument);
    assert_eq!(
        t.connect("127.0.0.1", 0).unwrap_err().code,
        Code::InvalidArgument
    );
    t.shutdown(None).unwrap();
    assert_eq!(t.shutdown(None).unwrap_err().code, Code::ShutDown);
    assert_eq!(t.connect("127.0.0.1", 1).unwrap_err().code, Code::ShutDown);
    assert!(t.poll_events().is_empty());
}
