//! How far the slot may be confirmed beyond the last acknowledged transaction.
//!
//! The server says, in keepalives and in messages outside transactions, that
//! it has sent everything before a position. WAL up to there that holds no
//! change of ours (other tables, `running_xacts`, checkpoints) can be confirmed
//! once every transaction forwarded before that statement is acknowledged.
//!
//! Why remember statements made while transactions were in flight: the
//! walsender pings only while the reported write position is behind what it
//! sent, and the reader reports what it received. After the one keepalive at
//! the end of a burst, which arrives while the burst's last transactions are
//! still on their way to Kafka, no other comes; without remembering it, the
//! slot stayed short of the end of the WAL until the next heartbeat (up to
//! `erp.heartbeat_interval_ms`, 10 s), holding that WAL on the server.
//!
//! Pure logic, no I/O.

use std::collections::VecDeque;

use crate::erp::postgres::lsn::Lsn;

/// Statements kept while Kafka is behind; older ones are dropped first, which
/// only delays the floor until a later statement's transactions are acknowledged.
const MAX_PENDING: usize = 64;

#[derive(Debug, Default)]
pub(super) struct IdleFloor {
    /// Confirmable already.
    floor: Lsn,
    /// (sent up to, end of the last transaction forwarded before): each
    /// confirmable once that transaction is acknowledged. Both increase.
    pending: VecDeque<(Lsn, Lsn)>,
}

impl IdleFloor {
    /// The server has sent everything before `sent`, with no transaction of
    /// ours open; `forwarded` is the end of the last transaction handed on.
    pub(super) fn sent_up_to(&mut self, sent: Lsn, forwarded: Lsn, acknowledged: Lsn) {
        if acknowledged >= forwarded {
            self.floor = self.floor.max(sent);
            return;
        }
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((sent, forwarded));
    }

    /// What may be reported as flushed, given the end of the last transaction
    /// whose events are all acknowledged.
    pub(super) fn confirmable(&mut self, acknowledged: Lsn) -> Lsn {
        while let Some(&(sent, forwarded)) = self.pending.front() {
            if forwarded > acknowledged {
                break;
            }
            self.floor = self.floor.max(sent);
            self.pending.pop_front();
        }
        acknowledged.max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_while_nothing_is_in_flight_counts_at_once() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Lsn(500), Lsn(100), Lsn(100));
        assert_eq!(f.confirmable(Lsn(100)), Lsn(500));
    }

    #[test]
    fn a_statement_while_in_flight_counts_once_its_transactions_are_acknowledged() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Lsn(500), Lsn(300), Lsn(100));
        assert_eq!(f.confirmable(Lsn(100)), Lsn(100));
        assert_eq!(
            f.confirmable(Lsn(200)),
            Lsn(200),
            "300 is not acknowledged yet"
        );
        assert_eq!(f.confirmable(Lsn(300)), Lsn(500));
        // Remembered: a later, smaller acknowledgement does not take it back.
        assert_eq!(f.confirmable(Lsn(300)), Lsn(500));
    }

    #[test]
    fn statements_count_in_order_as_acknowledgements_arrive() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Lsn(400), Lsn(300), Lsn(100));
        f.sent_up_to(Lsn(900), Lsn(800), Lsn(100));
        assert_eq!(f.confirmable(Lsn(300)), Lsn(400));
        assert_eq!(f.confirmable(Lsn(700)), Lsn(700));
        assert_eq!(f.confirmable(Lsn(800)), Lsn(900));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_statement() {
        let mut f = IdleFloor::default();
        for i in 0..(MAX_PENDING as u64 + 1) {
            f.sent_up_to(Lsn(1_000 + i * 10 + 5), Lsn(1_000 + i * 10), Lsn(0));
        }
        // The first statement (1005 after 1000) was dropped.
        assert_eq!(f.confirmable(Lsn(1_000)), Lsn(1_000));
        assert_eq!(f.confirmable(Lsn(1_010)), Lsn(1_015));
    }
}
