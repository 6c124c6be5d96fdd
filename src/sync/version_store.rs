//! The last applied version per key and processor, in Flywheel's own schema in
//! PostgreSQL, so the version guard survives restarts and replays.
//!
//! The upsert itself refuses to go backward (`WHERE excluded.version > …`), so
//! two workers racing on one key cannot lower a stored version.

use std::collections::HashMap;

use tokio_postgres::Client;

/// (version, tiebreak): compared as a pair, tiebreak as text.
pub type Version = (i64, String);

pub struct VersionStore {
    processor: String,
}

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS flywheel;
CREATE TABLE IF NOT EXISTS flywheel.applied_versions (
    processor  text NOT NULL,
    key        text NOT NULL,
    version    bigint NOT NULL,
    tiebreak   text NOT NULL DEFAULT '',
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, key))";

impl VersionStore {
    pub async fn open(
        client: &Client,
        processor: &str,
    ) -> Result<VersionStore, tokio_postgres::Error> {
        crate::pg::own_schema::create_tables(client, DDL).await?;
        Ok(VersionStore {
            processor: processor.to_owned(),
        })
    }

    /// Stored versions of `keys` (absent = never applied).
    pub async fn load(
        &self,
        client: &Client,
        keys: &[String],
    ) -> Result<HashMap<String, Version>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT key, version, tiebreak FROM flywheel.applied_versions
                 WHERE processor = $1 AND key = ANY($2)",
                &[&self.processor, &keys],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, i64>(1), r.get::<_, String>(2)),
                )
            })
            .collect())
    }

    /// Records applied versions; never lowers one.
    pub async fn store(
        &self,
        client: &Client,
        applied: &[(String, Version)],
    ) -> Result<(), tokio_postgres::Error> {
        if applied.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = applied.iter().map(|(k, _)| k.as_str()).collect();
        let versions: Vec<i64> = applied.iter().map(|(_, v)| v.0).collect();
        let tiebreaks: Vec<&str> = applied.iter().map(|(_, v)| v.1.as_str()).collect();
        client
            .execute(
                "INSERT INTO flywheel.applied_versions (processor, key, version, tiebreak)
                 SELECT $1, k, v, t FROM unnest($2::text[], $3::bigint[], $4::text[]) AS x(k, v, t)
                 ON CONFLICT (processor, key) DO UPDATE
                   SET version = excluded.version, tiebreak = excluded.tiebreak, applied_at = now()
                   WHERE (excluded.version, excluded.tiebreak)
                       > (flywheel.applied_versions.version, flywheel.applied_versions.tiebreak)",
                &[&self.processor, &keys, &versions, &tiebreaks],
            )
            .await?;
        Ok(())
    }
}

/// Whether `candidate` is newer than what was applied.
pub fn is_newer(candidate: &Version, applied: Option<&Version>) -> bool {
    applied.is_none_or(|a| candidate > a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_compares_version_then_tiebreak() {
        let v = |n: i64, t: &str| (n, t.to_string());
        assert!(is_newer(&v(1, ""), None));
        assert!(is_newer(&v(2, ""), Some(&v(1, "z"))));
        assert!(!is_newer(&v(1, "a"), Some(&v(1, "a"))), "equal is stale");
        assert!(is_newer(&v(1, "b"), Some(&v(1, "a"))));
        assert!(!is_newer(&v(0, "z"), Some(&v(1, ""))));
    }
}
