//! Connector files (`connectors/*.toml`): per entity, the SQL model and the
//! tables whose changes trigger it. See `connectors/odoo.toml` for the format.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ErpConfig, ErpKind};

/// The connectors built into the binary, by name: `erp.connector = "erpnext"`
/// loads one without a file.
const BUILTIN: &[(&str, &str)] = &[
    ("odoo", include_str!("../../connectors/odoo.toml")),
    ("erpnext", include_str!("../../connectors/erpnext.toml")),
];

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
    /// The connector of `erp`: `erp.connector`, or the built-in one of its
    /// database kind (`odoo` on PostgreSQL, `erpnext` on MariaDB/MySQL).
    pub fn for_erp(erp: &ErpConfig) -> Result<Connector, ConnectorError> {
        let default = match erp.kind() {
            ErpKind::Postgres => "odoo",
            ErpKind::Mysql => "erpnext",
        };
        Connector::load(erp.connector.as_deref(), default)
    }

    /// Loads the connector `setting` names: a file, or a built-in connector
    /// by name (`odoo`, `erpnext`) when no such file exists; `default` (a
    /// built-in name) when unset.
    pub fn load(setting: Option<&Path>, default: &str) -> Result<Connector, ConnectorError> {
        let builtin = |name: &str| {
            BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, text)| Connector::parse(&format!("<built-in connectors/{n}.toml>"), text))
        };
        match setting {
            None => builtin(default).unwrap_or_else(|| {
                Err(ConnectorError::Invalid {
                    path: default.into(),
                    reason: "no built-in connector has this name".into(),
                })
            }),
            Some(p) if !p.exists() && builtin(&p.to_string_lossy()).is_some() => {
                builtin(&p.to_string_lossy()).unwrap_or_else(|| unreachable!())
            }
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
        let c = Connector::load(None, "odoo").unwrap();
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
    fn builtin_erpnext_loads_by_name() {
        let c = Connector::load(Some(Path::new("erpnext")), "odoo").unwrap();
        assert_eq!(c.name, "erpnext");
        assert_eq!(c.entities["stock"].key, vec!["sku", "warehouse"]);
        assert!(c.trigger_tables().iter().any(|t| t.ends_with(".tabBin")));
        let err = Connector::load(Some(Path::new("no-such-connector.toml")), "odoo").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
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
