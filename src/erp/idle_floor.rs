//! How far a source may confirm beyond the last acknowledged transaction.
//!
//! The server says that it has sent everything before a position: PostgreSQL
//! in keepalives and in messages outside transactions, MariaDB/MySQL with
//! heartbeats and transactions that touch none of our tables. The log up to
//! there holds no change of ours (other tables, PostgreSQL's `running_xacts`,
//! checkpoints) and can be confirmed once every transaction forwarded before
//! that statement is acknowledged.
//!
//! Why remember statements made while transactions were in flight: after a
//! burst the server makes one, while the burst's last transactions are still
//! on their way to Kafka, and then none (PostgreSQL's walsender pings only
//! while the reported write position is behind what it sent, and the reader
//! reports what it received). Counting only statements made with nothing in
//! flight, the confirmed position stayed short of the log's end until the next
//! heartbeat (up to `erp.heartbeat_interval_ms`, 10 s), and PostgreSQL kept
//! that WAL.
//!
//! Used by both readers (`erp::postgres::source`, `erp::mysql::source`). Pure
//! logic, no I/O.

use std::collections::VecDeque;

/// Statements kept while Kafka is behind; older ones are dropped first, which
/// only delays the floor until a later statement's transactions are acknowledged.
const MAX_PENDING: usize = 64;

/// Positions (`P`: PostgreSQL's LSN, the binlog's position) the server said
/// it sent everything before.
#[derive(Debug, Default)]
pub struct IdleFloor<P> {
    /// Confirmable already.
    floor: P,
    /// (sent up to, end of the last transaction forwarded before): each
    /// confirmable once that transaction is acknowledged. Both increase.
    pending: VecDeque<(P, P)>,
}

impl<P: Copy + Ord> IdleFloor<P> {
    /// The server has sent everything before `sent`, with no transaction of
    /// ours open; `forwarded` is the end of the last transaction handed on.
    pub fn sent_up_to(&mut self, sent: P, forwarded: P, acknowledged: P) {
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
    pub fn confirmable(&mut self, acknowledged: P) -> P {
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
    use crate::erp::position::Position;

    #[test]
    fn a_statement_while_nothing_is_in_flight_counts_at_once() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Position(500), Position(100), Position(100));
        assert_eq!(f.confirmable(Position(100)), Position(500));
    }

    #[test]
    fn a_statement_while_in_flight_counts_once_its_transactions_are_acknowledged() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Position(500), Position(300), Position(100));
        assert_eq!(f.confirmable(Position(100)), Position(100));
        assert_eq!(
            f.confirmable(Position(200)),
            Position(200),
            "300 is not acknowledged yet"
        );
        assert_eq!(f.confirmable(Position(300)), Position(500));
        // Remembered: a later, smaller acknowledgement does not take it back.
        assert_eq!(f.confirmable(Position(300)), Position(500));
    }

    #[test]
    fn statements_count_in_order_as_acknowledgements_arrive() {
        let mut f = IdleFloor::default();
        f.sent_up_to(Position(400), Position(300), Position(100));
        f.sent_up_to(Position(900), Position(800), Position(100));
        assert_eq!(f.confirmable(Position(300)), Position(400));
        assert_eq!(f.confirmable(Position(700)), Position(700));
        assert_eq!(f.confirmable(Position(800)), Position(900));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_statement() {
        let mut f = IdleFloor::default();
        for i in 0..(MAX_PENDING as u64 + 1) {
            f.sent_up_to(
                Position(1_000 + i * 10 + 5),
                Position(1_000 + i * 10),
                Position(0),
            );
        }
        // The first statement (1005 after 1000) was dropped.
        assert_eq!(f.confirmable(Position(1_000)), Position(1_000));
        assert_eq!(f.confirmable(Position(1_010)), Position(1_015));
    }
}
