//! Attribution of anonymous error replies, by elimination.
//!
//! The deployed server's upload error replies carry only `error`: no name, no
//! seq. They are matched to requests without guessing, from three facts of
//! the protocol:
//! 1. every upload request gets exactly one reply;
//! 2. error replies come in request order among themselves (one logic worker
//!    answers them as it reads the requests), though they may overtake earlier
//!    success replies (those come from per-name file workers);
//! 3. replies for one name come in order.
//!
//! An error that arrived when the requests numbered below `bound` had been
//! sent answers one of the unanswered upload requests below `bound` (the
//! *candidates*). The oldest pending error is attributed when
//! * (a) it has exactly one candidate;
//! * (c) its oldest candidate is *known* to have errored, because a later seq
//!   of the same file was acknowledged (fact 3: that request's reply, an
//!   error, already came);
//! * (b) the candidates of the newest pending error are exactly as many as
//!   the pending errors: then all of them errored, matched in order (fact 2).
//!
//! Until then the errors wait; the engine holds back the last chunk of every
//! candidate file (a last chunk would make the deployed server mark the
//! message uploaded). An error with no candidate at all answers nothing we
//! sent: it is counted as unknown and dropped.
//!
//! Invariant: `known_errored` holds only unanswered request numbers; the
//! engine calls [`Attribution::answered`] whenever a request leaves the
//! in-flight table.

use std::collections::{BTreeSet, VecDeque};

use super::inflight::ReqNo;
use crate::protocol::ErrorCode;

/// An error reply not yet attributed to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingError {
    code: ErrorCode,
    /// The request it answers was numbered below this (sent before it arrived).
    bound: ReqNo,
}

#[derive(Debug, Default)]
pub(super) struct Attribution {
    pending: VecDeque<PendingError>,
    known_errored: BTreeSet<ReqNo>,
}

/// What [`Attribution::resolve`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Resolved {
    /// Requests and the error that answered them, in request order.
    pub attributed: Vec<(ReqNo, ErrorCode)>,
    /// Errors that matched no request.
    pub unknown: u64,
}

impl Attribution {
    /// An anonymous error arrived; every request numbered below `bound` had been sent.
    pub fn push(&mut self, code: ErrorCode, bound: ReqNo) {
        self.pending.push_back(PendingError { code, bound });
    }

    /// Requests of one file sent before one of its acknowledged requests and
    /// still unanswered: their (error) replies already came.
    pub fn known_errors(&mut self, requests: impl IntoIterator<Item = ReqNo>) {
        self.known_errored.extend(requests);
    }

    /// A request left the in-flight table.
    pub fn answered(&mut self, no: ReqNo) {
        self.known_errored.remove(&no);
    }

    /// While this is `Some(bound)`, a file with an unanswered request below
    /// `bound` may own an unattributed error and holds back its last chunk.
    pub fn hold_back_bound(&self) -> Option<ReqNo> {
        self.pending.back().map(|e| e.bound)
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.known_errored.clear();
    }

    /// Attributes what can be attributed. `candidates(bound)` lists the
    /// unanswered upload requests numbered below `bound`, oldest first; the
    /// requests attributed here count as answered from then on (the caller
    /// removes them from its table afterwards).
    pub fn resolve(&mut self, candidates: impl Fn(ReqNo) -> Vec<ReqNo>) -> Resolved {
        let mut out = Resolved::default();
        let mut taken = BTreeSet::new();
        let open = |bound: ReqNo, taken: &BTreeSet<ReqNo>| -> Vec<ReqNo> {
            candidates(bound)
                .into_iter()
                .filter(|r| !taken.contains(r))
                .collect()
        };
        while let Some(head) = self.pending.front().copied() {
            let first = open(head.bound, &taken);
            if first.is_empty() {
                self.pending.pop_front();
                out.unknown += 1;
                continue;
            }
            if first.len() == 1 || self.known_errored.contains(&first[0]) {
                self.pending.pop_front();
                self.known_errored.remove(&first[0]);
                taken.insert(first[0]);
                out.attributed.push((first[0], head.code));
                continue;
            }
            let newest = self.pending.back().map_or(head.bound, |e| e.bound);
            let all = open(newest, &taken);
            if all.len() == self.pending.len() {
                for (no, err) in all.into_iter().zip(std::mem::take(&mut self.pending)) {
                    self.known_errored.remove(&no);
                    taken.insert(no);
                    out.attributed.push((no, err.code));
                }
            }
            break;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: ErrorCode = ErrorCode::FileNotExists;
    const E2: ErrorCode = ErrorCode::ErrorJson;

    fn unanswered(set: &[ReqNo]) -> impl Fn(ReqNo) -> Vec<ReqNo> + '_ {
        move |bound| set.iter().copied().filter(|r| *r < bound).collect()
    }

    #[test]
    fn a_single_candidate_takes_the_error() {
        let mut a = Attribution::default();
        a.push(E1, 1);
        let r = a.resolve(unanswered(&[0, 1, 2]));
        assert_eq!(r.attributed, vec![(0, E1)]);
        assert_eq!(a.hold_back_bound(), None);
    }

    #[test]
    fn two_candidates_wait_until_elimination() {
        let mut a = Attribution::default();
        a.push(E1, 2);
        assert_eq!(a.resolve(unanswered(&[0, 1])), Resolved::default());
        assert_eq!(a.hold_back_bound(), Some(2), "candidates hold back");
        // Request 0 was acknowledged: only 1 is left.
        let r = a.resolve(unanswered(&[1]));
        assert_eq!(r.attributed, vec![(1, E1)]);
    }

    #[test]
    fn as_many_errors_as_candidates_are_matched_in_order() {
        let mut a = Attribution::default();
        a.push(E1, 3);
        a.push(E2, 3);
        assert_eq!(a.resolve(unanswered(&[0, 1, 2])).attributed, vec![]);
        // 1 acknowledged: 0 and 2 are the two errors, in request order.
        let r = a.resolve(unanswered(&[0, 2]));
        assert_eq!(r.attributed, vec![(0, E1), (2, E2)]);
    }

    #[test]
    fn a_known_errored_oldest_candidate_takes_the_head_error() {
        let mut a = Attribution::default();
        a.push(E2, 3);
        a.known_errors([0]);
        let r = a.resolve(unanswered(&[0, 1, 2]));
        assert_eq!(r.attributed, vec![(0, E2)]);
    }

    #[test]
    fn an_error_for_nothing_is_unknown_and_dropped() {
        let mut a = Attribution::default();
        a.push(E1, 5);
        let r = a.resolve(unanswered(&[]));
        assert_eq!((r.attributed, r.unknown), (vec![], 1));
        assert_eq!(a.hold_back_bound(), None);
    }

    #[test]
    fn an_attributed_request_is_not_a_candidate_again() {
        let mut a = Attribution::default();
        a.push(E1, 1);
        a.push(E2, 1);
        // One candidate, two errors: the second matches nothing.
        let r = a.resolve(unanswered(&[0]));
        assert_eq!((r.attributed, r.unknown), (vec![(0, E1)], 1));
    }

    #[test]
    fn answered_requests_are_no_longer_known_errors() {
        let mut a = Attribution::default();
        a.known_errors([0]);
        a.answered(0);
        a.push(E1, 3);
        assert_eq!(a.resolve(unanswered(&[0, 1, 2])), Resolved::default());
    }
}
