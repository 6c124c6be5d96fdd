//! Connector files (`connectors/*.toml`): per entity, the SQL model and the
//! tables whose changes trigger it. See `connectors/odoo.toml` for the format.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

const BUILTIN_ODOO: &str = include_str!("../../connectors/odoo.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot read connector file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("connector file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    pub name: String,
    pub entities: BTreeMap<String, EntityDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityDef {
    pub topic: String,
    pub key: Vec<String>,
    pub all_keys: String,
    pub model: String,
    #[serde(default)]
    pub triggers: Vec<TriggerDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// `table` (schema `public`) or `schema.table`.
    pub table: String,
    pub columns: Vec<String>,
    pub keys: String,
}

impl TriggerDef {
    /// `schema.table` on PostgreSQL (schema `public` when unqualified), as
    /// pgoutput relations are matched.
    pub fn qualified_table(&self) -> String {
        self.qualified_table_in("public")
    }

    /// `schema.table`, with `default_schema` when the connector names none
    /// (MariaDB/MySQL: the database of `erp.dsn`).
    pub fn qualified_table_in(&self, default_schema: &str) -> String {
        if self.table.contains('.') {
            self.table.clone()
        } else {
            format!("{default_schema}.{}", self.table)
        }
    }
}

impl Connector {
    /// Loads `path`, or the built-in Odoo connector when `None`.
    pub fn load(path: Option<&Path>) -> Result<Connector, ConnectorError> {
        match path {
            None => Connector::parse("<built-in connectors/odoo.toml>", BUILTIN_ODOO),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConnectorError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Connector::parse(&p.display().to_string(), &text)
            }
        }
    }

    pub fn parse(origin: &str, text: &str) -> Result<Connector, ConnectorError> {
        let invalid = |reason: String| ConnectorError::Invalid {
            path: origin.into(),
            reason,
        };
        let c: Connector = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if c.entities.is_empty() {
            return Err(invalid("declares no entities".into()));
        }
        for (name, e) in &c.entities {
            if e.key.is_empty() {
                return Err(invalid(format!("entity `{name}` has an empty key")));
            }
            if e.triggers.is_empty() {
                return Err(invalid(format!(
                    "entity `{name}` has no triggers, so no change would ever reach it"
                )));
            }
            for t in &e.triggers {
                if t.columns.is_empty() {
                    return Err(invalid(format!(
                        "entity `{name}`: trigger on `{}` reads no columns",
                        t.table
                    )));
                }
            }
        }
        Ok(c)
    }

    /// Every table some entity is triggered by, qualified, sorted, unique.
    pub fn trigger_tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .entities
            .values()
            .flat_map(|e| e.triggers.iter().map(TriggerDef::qualified_table))
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }

    /// Every topic the entities publish to.
    pub fn topics(&self) -> Vec<String> {
        self.entities.values().map(|e| e.topic.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_odoo_parses() {
        let c = Connector::load(None).unwrap();
        assert_eq!(c.name, "odoo");
        assert_eq!(c.entities["stock"].key, vec!["sku", "warehouse"]);
        assert_eq!(
            c.entities["price"].key,
            vec!["sku", "price_list", "currency"]
        );
        assert!(
            c.trigger_tables()
                .contains(&"public.stock_quant".to_string())
        );
    }

    #[test]
    fn rejects_entities_without_triggers() {
        let err = Connector::parse(
            "t",
            "name='x'\n[entities.a]\ntopic='t'\nkey=['k']\nall_keys='s'\nmodel='m'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no triggers"), "{err}");
    }
}
