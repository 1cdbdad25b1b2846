/// Message ids on the ResourceServer connection (`const.h` of the deployed server).
///
/// Kept as a transparent `u16` rather than an enum so that an unknown id from
/// the network is representable and simply dropped, as the server does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u16);

impl MsgId {
    pub const UPLOAD_HEAD_ICON_REQ: MsgId = MsgId(1031);
    pub const UPLOAD_HEAD_ICON_RSP: MsgId = MsgId(1032);
    pub const DOWN_LOAD_FILE_REQ: MsgId = MsgId(1033);
    pub const DOWN_LOAD_FILE_RSP: MsgId = MsgId(1034);
    pub const IMG_CHAT_UPLOAD_REQ: MsgId = MsgId(1037);
    pub const IMG_CHAT_UPLOAD_RSP: MsgId = MsgId(1038);
    pub const NOTIFY_IMG_CHAT_MSG: MsgId = MsgId(1039);
    pub const FILE_INFO_SYNC_REQ: MsgId = MsgId(1041);
    pub const FILE_INFO_SYNC_RSP: MsgId = MsgId(1042);
    pub const IMG_CHAT_CONTINUE_UPLOAD_REQ: MsgId = MsgId(1043);
    pub const IMG_CHAT_CONTINUE_UPLOAD_RSP: MsgId = MsgId(1044);
    pub const IMG_CHAT_DOWN_INFO_SYNC_REQ: MsgId = MsgId(1045);
    pub const IMG_CHAT_DOWN_INFO_SYNC_RSP: MsgId = MsgId(1046);
    pub const IMG_CHAT_DOWN_REQ: MsgId = MsgId(1047);
    pub const IMG_CHAT_DOWN_RSP: MsgId = MsgId(1048);

    /// The reply id for a request id (requests are odd, replies the next even id).
    pub fn reply(self) -> MsgId {
        MsgId(self.0.wrapping_add(1))
    }

    /// True for the upload-chunk replies the engine consumes (avatars included).
    pub fn is_upload_reply(self) -> bool {
        matches!(self.0, 1032 | 1038 | 1042 | 1044)
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1031 => "UPLOAD_HEAD_ICON_REQ",
            1032 => "UPLOAD_HEAD_ICON_RSP",
            1033 => "DOWN_LOAD_FILE_REQ",
            1034 => "DOWN_LOAD_FILE_RSP",
            1037 => "IMG_CHAT_UPLOAD_REQ",
            1038 => "IMG_CHAT_UPLOAD_RSP",
            1039 => "NOTIFY_IMG_CHAT_MSG",
            1041 => "FILE_INFO_SYNC_REQ",
            1042 => "FILE_INFO_SYNC_RSP",
            1043 => "IMG_CHAT_CONTINUE_UPLOAD_REQ",
            1044 => "IMG_CHAT_CONTINUE_UPLOAD_RSP",
            1045 => "IMG_CHAT_DOWN_INFO_SYNC_REQ",
            1046 => "IMG_CHAT_DOWN_INFO_SYNC_RSP",
            1047 => "IMG_CHAT_DOWN_REQ",
            1048 => "IMG_CHAT_DOWN_RSP",
            _ => return None,
        })
    }
}

impl std::fmt::Debug for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{}({})", n, self.0),
            None => write!(f, "MsgId({})", self.0),
        }
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
