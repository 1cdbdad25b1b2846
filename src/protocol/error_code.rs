use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error codes of the ResourceServer (`ErrorCodes` in the deployed `const.h`).
///
/// Unknown codes are kept verbatim in [`ErrorCode::Other`] so that a newer
/// server's code reaches the user instead of being flattened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ErrorCode {
    #[default]
    Success,
    ErrorJson,
    TokenInvalid,
    UidInvalid,
    FileNotExists,
    FileSaveError,
    CreateDirFailed,
    FileWritePermissionFailed,
    FileReadPermissionFailed,
    FileSeqInvalid,
    FileOffsetInvalid,
    FileReadFailed,
    RedisReadErr,
    ServerIpErr,
    MsgIdInvalid,
    /// 1023, sent by this project's reference server only: the complete
    /// file's md5 differs from the announced one (nothing was published).
    Md5Mismatch,
    Other(i64),
}

impl ErrorCode {
    pub fn from_code(code: i64) -> ErrorCode {
        use ErrorCode::*;
        match code {
            0 => Success,
            1001 => ErrorJson,
            1010 => TokenInvalid,
            1011 => UidInvalid,
            1012 => FileNotExists,
            1013 => FileSaveError,
            1014 => CreateDirFailed,
            1015 => FileWritePermissionFailed,
            1016 => FileReadPermissionFailed,
            1017 => FileSeqInvalid,
            1018 => FileOffsetInvalid,
            1019 => FileReadFailed,
            1020 => RedisReadErr,
            1021 => ServerIpErr,
            1022 => MsgIdInvalid,
            1023 => Md5Mismatch,
            other => Other(other),
        }
    }

    pub fn code(self) -> i64 {
        use ErrorCode::*;
        match self {
            Success => 0,
            ErrorJson => 1001,
            TokenInvalid => 1010,
            UidInvalid => 1011,
            FileNotExists => 1012,
            FileSaveError => 1013,
            CreateDirFailed => 1014,
            FileWritePermissionFailed => 1015,
            FileReadPermissionFailed => 1016,
            FileSeqInvalid => 1017,
            FileOffsetInvalid => 1018,
            FileReadFailed => 1019,
            RedisReadErr => 1020,
            ServerIpErr => 1021,
            MsgIdInvalid => 1022,
            Md5Mismatch => 1023,
            Other(c) => c,
        }
    }

    pub fn is_success(self) -> bool {
        self == ErrorCode::Success
    }

    /// A short human description, for error messages shown to users.
    pub fn describe(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Success => "success",
            ErrorJson => "bad JSON",
            TokenInvalid => "token invalid",
            UidInvalid => "uid invalid",
            FileNotExists => "file not exists (no upload record on the server)",
            FileSaveError => "server could not save its state",
            CreateDirFailed => "server could not create the path",
            FileWritePermissionFailed => "no write permission on the server",
            FileReadPermissionFailed => "no read permission on the server",
            FileSeqInvalid => "seq invalid",
            FileOffsetInvalid => "offset invalid",
            FileReadFailed => "server read failed",
            RedisReadErr => "server state read failed",
            ServerIpErr => "server ip error",
            MsgIdInvalid => "message id invalid",
            Md5Mismatch => "md5 of the stored file differs from the announced one",
            Other(_) => "unknown server error code",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.describe())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ErrorCode::from_code(i64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for code in [
            0, 1001, 1010, 1011, 1012, 1013, 1014, 1015, 1016, 1017, 1018, 1019, 1020, 1021, 1022,
        ] {
            let e = ErrorCode::from_code(code);
            assert_eq!(e.code(), code);
            assert!(
                !matches!(e, ErrorCode::Other(_)),
                "{code} must be a known code"
            );
        }
        assert_eq!(ErrorCode::from_code(4242), ErrorCode::Other(4242));
        assert_eq!(ErrorCode::from_code(-7).code(), -7);
        let parsed: ErrorCode = serde_json::from_str("1099").unwrap();
        assert_eq!(parsed.code(), 1099);
    }
}
