//! Checks that the source can be captured, each failing with the fix. `setup` runs them to
//! prepare a source; `stream` and `run` run them before touching the slot.

use tokio_postgres::Client;

use super::catalog::TableName;
use super::CaptureError;
use crate::pg::{ident, PgUrl};

pub async fn check_wal_level(client: &Client, url: &PgUrl) -> Result<(), CaptureError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| url.query_error("reading wal_level", e))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(CaptureError::WalLevel {
            target: url.target(),
            actual: level,
        });
    }
    Ok(())
}

/// The connecting role may open replication connections (REPLICATION, superuser, or the
/// `rds_replication` role of RDS/Aurora).
pub async fn check_replication_role(client: &Client, url: &PgUrl) -> Result<(), CaptureError> {
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper OR r.rolreplication OR EXISTS ( \
               SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' \
               AND pg_has_role(current_user, g.oid, 'member')) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| url.query_error("reading the role's attributes", e))?;
    let role: String = row.get(0);
    if !row.get::<_, bool>(1) {
        return Err(CaptureError::NoReplicationRole {
            role: ident(&role),
            target: url.target(),
        });
    }
    Ok(())
}

pub async fn publication_exists(
    client: &Client,
    url: &PgUrl,
    publication: &str,
) -> Result<bool, CaptureError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| url.query_error("reading pg_publication", e))?;
    Ok(row.is_some())
}

/// The tables to capture: the publication's, narrowed to `wanted` when given. Fails when the
/// publication is missing, empty, or lacks a wanted table.
pub async fn captured_tables(
    client: &Client,
    url: &PgUrl,
    publication: &str,
    wanted: Option<&[TableName]>,
) -> Result<Vec<TableName>, CaptureError> {
    if !publication_exists(client, url, publication).await? {
        return Err(CaptureError::NoPublication {
            publication: publication.into(),
            target: url.target(),
        });
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(|e| url.query_error("listing the publication's tables", e))?;
    let published: Vec<TableName> = rows
        .iter()
        .map(|r| TableName::new(r.get(0), r.get(1)))
        .collect();
    let tables = match wanted {
        None => published,
        Some(wanted) => {
            let missing: Vec<String> = wanted
                .iter()
                .filter(|t| !published.contains(t))
                .map(TableName::quoted)
                .collect();
            if !missing.is_empty() {
                return Err(CaptureError::PublicationMissingTables {
                    publication: publication.into(),
                    missing: missing.join(", "),
                });
            }
            wanted.to_vec()
        }
    };
    if tables.is_empty() {
        return Err(CaptureError::EmptyPublication {
            publication: publication.into(),
        });
    }
    Ok(tables)
}

/// Every table exists, can be read, and identifies its rows in updates and deletes.
pub async fn check_tables(
    client: &Client,
    url: &PgUrl,
    tables: &[TableName],
) -> Result<(), CaptureError> {
    let mut unreadable = Vec::new();
    for t in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                   has_table_privilege(c.oid, 'SELECT'), current_user::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| url.query_error("reading the table's replica identity", e))?;
        let Some(row) = row else {
            return Err(CaptureError::NoTable {
                table: t.to_string(),
                target: url.target(),
            });
        };
        let identity: String = row.get(0);
        let has_pk: bool = row.get(1);
        if (identity == "d" && !has_pk) || identity == "n" {
            return Err(CaptureError::NoIdentity {
                table: t.quoted(),
                identity: if identity == "n" {
                    "NOTHING"
                } else {
                    "DEFAULT"
                }
                .into(),
            });
        }
        if !row.get::<_, bool>(2) {
            unreadable.push((t.quoted(), row.get::<_, String>(3)));
        }
    }
    if let Some((_, role)) = unreadable.first() {
        return Err(CaptureError::NoSelect {
            role: ident(role),
            tables: unreadable
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}
