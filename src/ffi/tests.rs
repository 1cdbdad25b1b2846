//! Unit tests of the foreign layers' Rust side. Those that need the
//! reference server are in `tools/tests/ffi.rs`; the C, C++ and CMake sides
//! are exercised by `tools/tests/cpp.rs`.

use super::bridge::ffi::Status;
use super::capi::chatxfer_result as R;
use super::*;

#[test]
fn result_numbers_agree_across_rust_c_and_cpp() {
    let table = [
        (Code::Ok, R::Ok, Status::Ok, 0),
        (
            Code::NullParameter,
            R::NullParameter,
            Status::NullParameter,
            1,
        ),
        (Code::InvalidUtf8, R::InvalidUtf8, Status::InvalidUtf8, 2),
        (
            Code::InvalidArgument,
            R::InvalidArgument,
            Status::InvalidArgument,
            3,
        ),
        (Code::InvalidName, R::InvalidName, Status::InvalidName, 4),
        (Code::Io, R::Io, Status::Io, 5),
        (Code::NotAFile, R::NotAFile, Status::NotAFile, 6),
        (
            Code::DuplicateName,
            R::DuplicateName,
            Status::DuplicateName,
            7,
        ),
        (Code::UnknownName, R::UnknownName, Status::UnknownName, 8),
        (Code::WrongState, R::WrongState, Status::WrongState, 9),
        (
            Code::NotConnected,
            R::NotConnected,
            Status::NotConnected,
            10,
        ),
        (
            Code::AlreadyConnected,
            R::AlreadyConnected,
            Status::AlreadyConnected,
            11,
        ),
        (Code::ShutDown, R::ShutDown, Status::ShutDown, 12),
        (Code::Runtime, R::Runtime, Status::Runtime, 13),
        (Code::BadFrame, R::BadFrame, Status::BadFrame, 14),
        (Code::Panic, R::Panic, Status::Panic, 15),
    ];
    for (code, c, cpp, n) in table {
        assert_eq!(code as u32, n, "{code:?}");
        assert_eq!(c as u32, n, "{c:?}");
        assert_eq!(cpp.repr, n, "{cpp:?}");
        assert_eq!(R::from_code(code), c);
        assert_eq!(bridge::to_status(code), cpp);
    }
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
fn transfer_refuses_calls_before_connect_and_after_shutdown() {
    let t = Transfer::new(None);
    assert_eq!(t.pause("x").unwrap_err().code, Code::NotConnected);
    assert_eq!(t.connect("", 1).unwrap_err().code, Code::InvalidArgument);
    assert_eq!(
        t.connect("127.0.0.1", 0).unwrap_err().code,
        Code::InvalidArgument
    );
    t.shutdown().unwrap();
    assert_eq!(t.shutdown().unwrap_err().code, Code::ShutDown);
    assert_eq!(t.connect("127.0.0.1", 1).unwrap_err().code, Code::ShutDown);
    assert!(t.poll_events().is_empty());
}
