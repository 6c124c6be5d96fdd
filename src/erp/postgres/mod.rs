//! The PostgreSQL source: a walsender client (`replication`), our pgoutput
//! decoder (`pgoutput`), committed transactions of touched trigger rows
//! (`capture`), slot and start-up checks (`slot`), the wait for commits to
//! become visible (`visibility`), and the source loop with its initial
//! snapshot (`source`). What every ERP source shares — connectors, entity
//! models, metrics — is in the parent module.

pub mod capture;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod slot;
pub mod source;
pub mod visibility;

impl From<lsn::Lsn> for super::position::Position {
    fn from(lsn: lsn::Lsn) -> Self {
        super::position::Position(lsn.0)
    }
}
