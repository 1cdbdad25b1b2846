//! The in-flight table: every request on the wire that has not been answered.
//!
//! One table owns both indexes — request number → request, and transfer →
//! its seqs → request number — so they cannot disagree: every insertion and
//! removal goes through this type.
//!
//! Invariants:
//! * request numbers grow by one per request on the engine's life, so their
//!   order is the order the requests were sent (error attribution relies on it);
//! * a transfer has at most one unanswered request per seq (uploads never send
//!   a seq twice on a connection; downloads send in order);
//! * `by_transfer[t]` holds exactly the `(seq, number)` pairs of `requests`
//!   whose transfer is `t`, and no empty entry.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::types::FileId;

/// A request's number: its place in the order of sending.
pub(super) type ReqNo = u64;

/// What a request was; replies of each kind are matched separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKind {
    /// An upload chunk (1041/1037/1043/1031).
    UploadChunk,
    /// A download's 1045 (message id → name and size).
    DownloadInfo,
    /// A download chunk (1047/1033).
    DownloadChunk,
    /// A size probe of an upload: a 1047 with seq 1 for its own name
    /// (recorded with seq 0, which no chunk has).
    UploadProbe,
}

/// One request on the wire that has not been answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    pub transfer: FileId,
    /// The chunk's seq; 0 for a 1045, which has none.
    pub seq: u32,
    pub sent_at: Instant,
    /// The upload's last chunk.
    pub last: bool,
    pub kind: RequestKind,
}

#[derive(Debug, Default)]
pub(super) struct InFlight {
    next: ReqNo,
    requests: BTreeMap<ReqNo, Request>,
    by_transfer: HashMap<FileId, BTreeMap<u32, ReqNo>>,
}

impl InFlight {
    /// Records a request just sent; returns its number.
    pub fn insert(&mut self, request: Request) -> ReqNo {
        let no = self.next;
        self.next += 1;
        let previous = self
            .by_transfer
            .entry(request.transfer)
            .or_default()
            .insert(request.seq, no);
        if let Some(old) = previous {
            // A seq sent twice while unanswered breaks the accounting; keep
            // the table consistent by forgetting the older request.
            debug_assert!(
                false,
                "seq {} of {:?} sent twice",
                request.seq, request.transfer
            );
            self.requests.remove(&old);
        }
        self.requests.insert(no, request);
        no
    }

    /// Removes an answered request.
    pub fn remove(&mut self, no: ReqNo) -> Option<Request> {
        let request = self.requests.remove(&no)?;
        if let Some(seqs) = self.by_transfer.get_mut(&request.transfer) {
            seqs.remove(&request.seq);
            if seqs.is_empty() {
                self.by_transfer.remove(&request.transfer);
            }
        }
        Some(request)
    }

    /// Forgets every request (the connection is gone); returns them.
    pub fn clear(&mut self) -> Vec<Request> {
        self.by_transfer.clear();
        std::mem::take(&mut self.requests).into_values().collect()
    }

    pub fn get(&self, no: ReqNo) -> Option<&Request> {
        self.requests.get(&no)
    }

    /// The unanswered request of `transfer` for `seq`.
    pub fn find(&self, transfer: FileId, seq: u32) -> Option<ReqNo> {
        self.by_transfer.get(&transfer)?.get(&seq).copied()
    }

    /// `transfer`'s unanswered requests as `(seq, number)`, by seq.
    pub fn of(&self, transfer: FileId) -> impl Iterator<Item = (u32, ReqNo)> + '_ {
        self.by_transfer
            .get(&transfer)
            .into_iter()
            .flat_map(|m| m.iter().map(|(s, n)| (*s, *n)))
    }

    /// `transfer`'s oldest unanswered request (the one its next in-order reply answers).
    pub fn oldest_of(&self, transfer: FileId) -> Option<ReqNo> {
        self.of(transfer).map(|(_, n)| n).min()
    }

    pub fn count(&self, transfer: FileId) -> usize {
        self.by_transfer.get(&transfer).map_or(0, |m| m.len())
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// The number the next request will get.
    pub fn next_no(&self) -> ReqNo {
        self.next
    }

    pub fn iter(&self) -> impl Iterator<Item = (ReqNo, &Request)> + '_ {
        self.requests.iter().map(|(n, r)| (*n, r))
    }

    /// Unanswered requests of `kind` sent before `bound`, oldest first.
    pub fn of_kind_before(&self, kind: RequestKind, bound: ReqNo) -> Vec<ReqNo> {
        self.requests
            .range(..bound)
            .filter(|(_, r)| r.kind == kind)
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: u64, seq: u32, now: Instant) -> Request {
        Request {
            transfer: FileId(t),
            seq,
            sent_at: now,
            last: false,
            kind: RequestKind::UploadChunk,
        }
    }

    #[test]
    fn both_indexes_follow_every_insert_and_remove() {
        let now = Instant::now();
        let mut t = InFlight::default();
        let a = t.insert(req(1, 1, now));
        let b = t.insert(req(1, 2, now));
        let c = t.insert(req(2, 1, now));
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(t.find(FileId(1), 2), Some(b));
        assert_eq!(t.count(FileId(1)), 2);
        assert_eq!(t.oldest_of(FileId(1)), Some(a));
        assert!(t.remove(a).is_some());
        assert!(t.remove(a).is_none(), "a request is answered once");
        assert_eq!(t.find(FileId(1), 1), None);
        assert_eq!(t.oldest_of(FileId(1)), Some(b));
        assert_eq!(t.of_kind_before(RequestKind::UploadChunk, 3), vec![b, c]);
        assert_eq!(t.clear().len(), 2);
        assert_eq!((t.len(), t.count(FileId(2))), (0, 0));
        assert_eq!(t.next_no(), 3, "numbers are never reused");
    }
}
