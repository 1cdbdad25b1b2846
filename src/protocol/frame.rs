//! Framing: `[id: u16 BE][len: u32 BE][body: len bytes of JSON]`.
//!
//! The decoder checks the announced length against its limit before it
//! reserves anything, so a hostile length (up to 4 GiB) costs nothing. A short
//! header or body is simply "need more bytes", as the deployed server does.

use super::MsgId;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 6;

/// The deployed server's `MAX_LENGTH` (1024*50). A body of exactly this many
/// bytes is allowed; one byte more and the server stops reading the session.
pub const MAX_BODY_LEN: usize = 51_200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message {id}: body of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { id: u16, len: u64, limit: usize },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: MsgId,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(id: MsgId, body: impl Into<Vec<u8>>) -> Frame {
        Frame {
            id,
            body: body.into(),
        }
    }

    /// The frame as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        encode(self.id, &self.body, &mut out);
        out
    }
}

/// Appends one frame to `out`.
pub fn encode(id: MsgId, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads a header: `(id, body length)`.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> (MsgId, u32) {
    let id = u16::from_be_bytes([header[0], header[1]]);
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    (MsgId(id), len)
}

/// A frame borrowed from a buffer: id, body, bytes consumed.
pub type SplitFrame<'a> = (MsgId, &'a [u8], usize);

/// Splits one frame off the front of `buf` without copying the body.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((id, body, consumed)))`
/// a whole frame. An announced length over `limit` is an error at once, before
/// the body arrives.
pub fn split_frame(buf: &[u8], limit: usize) -> Result<Option<SplitFrame<'_>>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (id, len) = parse_header(header);
    if len as u64 > limit as u64 {
        return Err(FrameError::TooLong {
            id: id.0,
            len: len as u64,
            limit,
        });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((id, &buf[HEADER_LEN..end], end)))
}

/// A streaming decoder: feed it bytes as they arrive, take frames out.
///
/// Its buffer never holds more than one header plus `limit` body bytes beyond
/// what the caller last fed it, because an over-long frame is an error before
/// its body is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_BODY_LEN)
    }
}

impl FrameDecoder {
    pub fn new(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the stream is unusable: framing is lost.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match split_frame(&self.buf[self.start..], self.limit)? {
            None => Ok(None),
            Some((id, body, consumed)) => {
                let frame = Frame::new(id, body);
                self.start += consumed;
                Ok(Some(frame))
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_is_big_endian() {
        let f = Frame::new(MsgId(1041), b"{}".to_vec());
        assert_eq!(f.to_bytes(), vec![0x04, 0x11, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn limit_is_inclusive_and_checked_before_the_body() {
        let mut ok = vec![0x04, 0x11];
        ok.extend_from_slice(&(MAX_BODY_LEN as u32).to_be_bytes());
        ok.resize(HEADER_LEN + MAX_BODY_LEN, b' ');
        let (id, body, used) = split_frame(&ok, MAX_BODY_LEN).unwrap().unwrap();
        assert_eq!(
            (id, body.len(), used),
            (MsgId(1041), MAX_BODY_LEN, ok.len())
        );

        // One byte over: rejected from the header alone.
        let mut over = vec![0x04, 0x11];
        over.extend_from_slice(&(MAX_BODY_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            split_frame(&over, MAX_BODY_LEN),
            Err(FrameError::TooLong {
                id: 1041,
                len: 51_201,
                limit: MAX_BODY_LEN
            })
        );
        let mut huge = vec![0x04, 0x11, 0xff, 0xff, 0xff, 0xff];
        huge.push(b'{');
        assert!(split_frame(&huge, MAX_BODY_LEN).is_err());
    }

    #[test]
    fn decoder_reassembles_split_frames() {
        let mut wire = Frame::new(MsgId(1038), b"{\"a\":1}".to_vec()).to_bytes();
        wire.extend(Frame::new(MsgId(1042), b"{}".to_vec()).to_bytes());
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for b in &wire {
            d.extend(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, MsgId(1038));
        assert_eq!(got[1].body, b"{}");
        assert_eq!(d.buffered(), 0);
    }

    proptest! {
        /// Arbitrary bytes in arbitrary pieces: frames or an error, never a
        /// panic, and the buffer never holds more than the limit allows.
        #[test]
        fn decoder_never_panics_or_overbuffers(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            limit in 0usize..300,
        ) {
            let mut d = FrameDecoder::new(limit);
            'outer: for p in pieces {
                d.extend(&p);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(f.body.len() <= limit),
                        Ok(None) => break,
                        Err(FrameError::TooLong { len, .. }) => {
                            prop_assert!(len > limit as u64);
                            break 'outer;
                        }
                    }
                }
                prop_assert!(d.buffered() <= HEADER_LEN + limit + p.len());
            }
        }
    }
}
