//! Typed messages, with the JSON type of every field exactly as the deployed
//! client and server use it.
//!
//! Sizes are the trap: 1041/1037/1047/1048 carry them as JSON *strings*
//! (the server parses them with `std::stoll`, which also accepts a JSON
//! number), 1043/1044/1031 as JSON *ints* (the server's `asInt` throws on a
//! string). [`StrU64`] is a size that is written as a string and read from a
//! string or a number; a plain `u64` field is written and read as a number.
//!
//! Replies are decoded leniently (missing fields are `None`) because the
//! deployed server's error replies carry only `error`; requests are decoded
//! strictly (a missing or wrongly typed field is an error), because the
//! reference server must reject what would crash the deployed one.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{ErrorCode, MsgId, ProtocolError};

/// A non-negative size that travels as a decimal JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrU64(pub u64);

impl Serialize for StrU64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StrU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrU64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative size as a decimal string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrU64, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                v.parse()
                    .map(StrU64)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrU64, E> {
                Ok(StrU64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrU64, E> {
                u64::try_from(v)
                    .map(StrU64)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Either spelling of a size, for replies whose type depends on the id
/// (1038 strings, 1044 ints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct AnyU64(pub u64);

impl<'de> Deserialize<'de> for AnyU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrU64::deserialize(d).map(|s| AnyU64(s.0))
    }
}

fn decode<'a, T: Deserialize<'a>>(id: MsgId, body: &'a [u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|source| ProtocolError::Json { id: id.0, source })
}

fn expect_id(id: MsgId, ok: &[u16], wanted: &'static str) -> Result<(), ProtocolError> {
    if ok.contains(&id.0) {
        Ok(())
    } else {
        Err(ProtocolError::UnexpectedId { id: id.0, wanted })
    }
}

// ---------------------------------------------------------------- uploads

/// An upload chunk request as the server receives it: 1041, 1037 or 1043.
///
/// Decoding is strict about what the deployed server needs; sizes are read
/// with the type the id demands (strings or numbers for 1041/1037, numbers
/// only for 1043, where a string would crash the deployed server).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadChunkReq<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub md5: Cow<'a, str>,
    pub seq: u32,
    pub trans_size: AnyU64,
    pub total_size: AnyU64,
    #[serde(default)]
    pub last: i64,
    #[serde(default)]
    pub last_seq: Option<u32>,
    #[serde(borrow)]
    pub data: Cow<'a, str>,
    #[serde(default)]
    pub uid: i64,
    #[serde(default)]
    pub sender: i64,
    #[serde(default)]
    pub receiver: i64,
    #[serde(default)]
    pub message_id: i64,
    #[serde(borrow, default)]
    pub token: Option<Cow<'a, str>>,
}

impl<'a> UploadChunkReq<'a> {
    pub fn decode(id: MsgId, body: &'a [u8]) -> Result<Self, ProtocolError> {
        expect_id(
            id,
            &[1031, 1037, 1041, 1043],
            "an upload chunk request (1041/1037/1043/1031)",
        )?;
        if id == MsgId::IMG_CHAT_CONTINUE_UPLOAD_REQ {
            // 1043 sizes must be JSON ints no larger than i32::MAX (asInt).
            #[derive(Deserialize)]
            struct Ints {
                trans_size: serde_json::Number,
                total_size: serde_json::Number,
            }
            let ints: Ints = decode(id, body)?;
            for (field, n) in [
                ("trans_size", ints.trans_size),
                ("total_size", ints.total_size),
            ] {
                match n.as_u64() {
                    Some(v) if v <= super::MAX_1043_SIZE => {}
                    _ => {
                        return Err(ProtocolError::Field {
                            id: id.0,
                            field,
                            problem: format!("{n} is not an int in 0..=2147483647"),
                        })
                    }
                }
            }
        }
        decode(id, body)
    }
}

/// A reply to an upload chunk: 1042, 1038 or 1044.
///
/// A success carries `name` and `seq`; the deployed server's error replies
/// carry only `error` (the reference server adds `name` and `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct UploadRsp {
    pub error: ErrorCode,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seq: Option<u32>,
    #[serde(default)]
    pub last: Option<i64>,
    #[serde(default)]
    pub md5: Option<String>,
    #[serde(default)]
    pub uid: Option<i64>,
    #[serde(default)]
    pub sender: Option<i64>,
    #[serde(default)]
    pub receiver: Option<i64>,
    #[serde(default)]
    pub total_size: Option<AnyU64>,
    #[serde(default)]
    pub trans_size: Option<AnyU64>,
}

impl UploadRsp {
    pub fn decode(id: MsgId, body: &[u8]) -> Result<Self, ProtocolError> {
        expect_id(
            id,
            &[1032, 1038, 1042, 1044],
            "an upload reply (1042/1038/1044/1032)",
        )?;
        decode(id, body)
    }

    /// Encodes a success reply with the field types of `id` (the server side).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_success(
        id: MsgId,
        name: &str,
        seq: u32,
        last: i64,
        md5: &str,
        uid: i64,
        sender: i64,
        receiver: i64,
        trans_size: u64,
        total_size: u64,
    ) -> Vec<u8> {
        let mut v = serde_json::json!({
            "error": 0, "seq": seq, "name": name, "last": last, "md5": md5,
            "uid": uid, "sender": sender, "receiver": receiver,
        });
        match id.0 {
            1038 => {
                v["total_size"] = total_size.to_string().into();
                v["trans_size"] = trans_size.to_string().into();
            }
            1044 => {
                v["total_size"] = total_size.into();
                v["trans_size"] = trans_size.into();
            }
            _ => {}
        }
        serde_json::to_vec(&v).expect("a JSON value always serializes")
    }

    /// The success reply to `req`, echoing its fields as the server does.
    pub fn encode_success_for(id: MsgId, req: &UploadChunkReq<'_>) -> Vec<u8> {
        UploadRsp::encode_success(
            id,
            &req.name,
            req.seq,
            req.last,
            &req.md5,
            req.uid,
            req.sender,
            req.receiver,
            req.trans_size.0,
            req.total_size.0,
        )
    }

    /// An error reply. The deployed server sends `error` alone; `name`/`seq`
    /// are the reference server's addition, ignored by the deployed client.
    pub fn encode_error(code: ErrorCode, name: Option<&str>, seq: Option<u32>) -> Vec<u8> {
        let mut v = serde_json::json!({ "error": code.code() });
        if let Some(n) = name {
            v["name"] = n.into();
        }
        if let Some(s) = seq {
            v["seq"] = s.into();
        }
        serde_json::to_vec(&v).expect("a JSON value always serializes")
    }
}

// ---------------------------------------------------------------- downloads

/// 1045: ask the size and name of a chat message's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownInfoReq {
    pub message_id: i64,
}

/// 1046: the answer to 1045 (no reply at all for an unknown message id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DownInfoRsp {
    pub error: ErrorCode,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(default)]
    pub thread_id: Option<i64>,
    #[serde(default)]
    pub sender_id: Option<i64>,
    #[serde(default)]
    pub recv_id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub msg_type: Option<i64>,
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub total_size: Option<StrU64>,
}

/// 1047: one chunk of a chat file download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownChunkReq {
    pub name: String,
    pub seq: u32,
    pub trans_size: StrU64,
    pub total_size: StrU64,
    pub token: String,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub message_id: i64,
    pub uid: i64,
}

/// 1048: a downloaded chunk. Without `data` or `seq` it is a failure,
/// whatever `error` says (the deployed server overwrites most codes with 0).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DownChunkRsp {
    pub error: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<StrU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_size: Option<StrU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_last: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<i64>,
}

impl DownChunkRsp {
    /// True only for a reply that really carries a chunk.
    pub fn is_chunk(&self) -> bool {
        self.error.is_success() && self.data.is_some() && self.seq.is_some()
    }
}

// ---------------------------------------------------------------- avatars

/// 1031: one chunk of an avatar upload (stop-and-wait). Sizes are ints.
///
/// `token` travels on seq 1 only. Fields the deployed server reads with
/// `asInt`/`asString` from a missing key (null gives 0 or "") default here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IconUploadReq {
    pub name: String,
    #[serde(default)]
    pub md5: String,
    pub seq: u32,
    pub trans_size: u64,
    pub total_size: u64,
    #[serde(default)]
    pub last: i64,
    #[serde(default)]
    pub last_seq: u32,
    pub data: String,
    #[serde(default)]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// 1032: the answer to one avatar chunk. A success carries every field
/// (sizes as ints); the deployed server's logic-worker errors carry only
/// `error`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IconUploadRsp {
    pub error: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<AnyU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trans_size: Option<AnyU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u32>,
}

/// 1033: avatar download request. Sizes are the int 0 (the server never
/// reads them); `client_path` and `req_type` are strings, echoed in 1034.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvatarDownReq {
    pub name: String,
    pub seq: u32,
    #[serde(default)]
    pub trans_size: u64,
    #[serde(default)]
    pub total_size: u64,
    pub token: String,
    pub uid: i64,
    pub client_path: String,
    pub req_type: String,
}

/// 1034: a chunk of an avatar; echoes `client_path`, `name`, `req_type`.
/// Sizes are strings, as in 1048.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AvatarDownRsp {
    pub error: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<StrU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_size: Option<StrU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_last: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_type: Option<String>,
}

/// Decodes any message body into a typed value, or a [`ProtocolError`].
/// `name` and `seq` of a body that did not decode as the request it should
/// be, if they are there (an error reply names what it refuses).
pub fn name_and_seq(body: &[u8]) -> (Option<String>, Option<u32>) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return (None, None);
    };
    let name = map.get("name").and_then(|v| v.as_str()).map(str::to_owned);
    let seq = map
        .get("seq")
        .and_then(|v| v.as_u64())
        .and_then(|s| u32::try_from(s).ok());
    (name, seq)
}

pub fn decode_as<'a, T: Deserialize<'a>>(id: MsgId, body: &'a [u8]) -> Result<T, ProtocolError> {
    decode(id, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_are_strings_in_1047_and_ints_in_1031() {
        let req = DownChunkReq {
            name: "a.png".into(),
            seq: 2,
            trans_size: StrU64(65536),
            total_size: StrU64(100000),
            token: "t".into(),
            sender_id: 1,
            receiver_id: 2,
            message_id: 3,
            uid: 2,
        };
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(v["trans_size"], "65536");
        assert_eq!(v["total_size"], "100000");
        let icon = IconUploadReq {
            name: "h.png".into(),
            md5: "m".into(),
            seq: 1,
            trans_size: 10,
            total_size: 10,
            last: 1,
            last_seq: 1,
            data: "".into(),
            uid: 1,
            token: None,
        };
        let v = serde_json::to_value(&icon).unwrap();
        assert_eq!(v["total_size"], 10);
    }

    #[test]
    fn strict_1043_sizes() {
        let ok =
            br#"{"name":"a","seq":2,"trans_size":65536,"total_size":70000,"last":0,"data":""}"#;
        assert!(UploadChunkReq::decode(MsgId(1043), ok).is_ok());
        let string =
            br#"{"name":"a","seq":2,"trans_size":"65536","total_size":70000,"last":0,"data":""}"#;
        assert!(UploadChunkReq::decode(MsgId(1043), string).is_err());
        let big = br#"{"name":"a","seq":2,"trans_size":65536,"total_size":2147483648,"last":0,"data":""}"#;
        assert!(matches!(
            UploadChunkReq::decode(MsgId(1043), big),
            Err(ProtocolError::Field {
                field: "total_size",
                ..
            })
        ));
        // 1037 accepts both spellings, as std::stoll on the deployed server does.
        let s = br#"{"name":"a","seq":2,"trans_size":"65536","total_size":70000,"data":""}"#;
        let r = UploadChunkReq::decode(MsgId(1037), s).unwrap();
        assert_eq!((r.trans_size.0, r.total_size.0), (65536, 70000));
        let neg = br#"{"name":"a","seq":2,"trans_size":"-1","total_size":"1","data":""}"#;
        assert!(UploadChunkReq::decode(MsgId(1037), neg).is_err());
        let missing = br#"{"name":"a","seq":2,"total_size":"1","data":""}"#;
        assert!(UploadChunkReq::decode(MsgId(1037), missing).is_err());
    }

    #[test]
    fn error_reply_has_only_error() {
        let r = UploadRsp::decode(MsgId(1038), br#"{"error":1012}"#).unwrap();
        assert_eq!(r.error, ErrorCode::FileNotExists);
        assert_eq!((r.name, r.seq), (None, None));
        let body = UploadRsp::encode_success(MsgId(1038), "n", 3, 0, "m", 1, 1, 2, 98304, 100000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["trans_size"], "98304");
        let body = UploadRsp::encode_success(MsgId(1044), "n", 3, 0, "m", 1, 1, 2, 98304, 100000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["trans_size"], 98304);
        let r = UploadRsp::decode(MsgId(1044), &body).unwrap();
        assert_eq!(r.seq, Some(3));
    }

    proptest! {
        /// Arbitrary bytes and arbitrary JSON never panic any decoder.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), id in 1030u16..1050) {
            let id = MsgId(id);
            let _ = UploadChunkReq::decode(id, &bytes);
            let _ = UploadRsp::decode(id, &bytes);
            let _ = decode_as::<DownChunkRsp>(id, &bytes);
            let _ = decode_as::<DownInfoRsp>(id, &bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json(), id in prop_oneof![Just(1037u16), Just(1038), Just(1041), Just(1042), Just(1043), Just(1044)]) {
            let body = serde_json::to_vec(&v).unwrap();
            let _ = UploadChunkReq::decode(MsgId(id), &body);
            let _ = UploadRsp::decode(MsgId(id), &body);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9./\\\\]{0,8}".prop_map(Value::from),
        ];
        let keys = prop_oneof![
            Just("name".to_string()),
            Just("seq".to_string()),
            Just("error".to_string()),
            Just("trans_size".to_string()),
            Just("total_size".to_string()),
            Just("data".to_string()),
            Just("last".to_string()),
            "[a-z]{1,6}",
        ];
        leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
