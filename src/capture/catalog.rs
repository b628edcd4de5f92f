//! What the source's catalog says about replicated tables: their columns and types (for the
//! snapshot), primary keys (the envelope's `key`), and how user-defined types render.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::pgoutput::RelationMsg;
use super::CaptureError;
use crate::event::{Column, TableSchema, ValueKind};
use crate::pg::{PgError, PgUrl};

/// A published table, as `pg_publication_tables` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: &str, name: &str) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((schema, name)) => Self::new(schema, name),
            None => Self::new("public", s),
        }
    }

    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            crate::pg::ident(&self.schema),
            crate::pg::ident(&self.name)
        )
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Catalog lookups on a control connection, with a cache of type kinds.
pub struct Catalog {
    url: PgUrl,
    client: Client,
    kinds: HashMap<u32, ValueKind>,
}

impl Catalog {
    pub fn new(url: PgUrl, client: Client) -> Self {
        Self {
            url,
            client,
            kinds: HashMap::new(),
        }
    }

    /// The control connection, reconnected if the server dropped it (a restart).
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    pub async fn client(&mut self) -> Result<&Client, PgError> {
        self.ensure_connected().await?;
        Ok(&self.client)
    }

    async fn ensure_connected(&mut self) -> Result<(), PgError> {
        if self.client.is_closed() {
            self.client = self.url.connect().await?;
        }
        Ok(())
    }

    fn err(&self, context: &str, e: tokio_postgres::Error) -> PgError {
        self.url.query_error(context, e)
    }

    /// The kind of a type, asking the catalog for anything that is not built in: enums and
    /// composites render as text, domains as their base type, arrays by their element type.
    pub async fn kind_of(&mut self, oid: u32) -> Result<ValueKind, PgError> {
        self.ensure_connected().await?;
        if let Some(k) = ValueKind::builtin(oid) {
            return Ok(k);
        }
        if let Some(k) = self.kinds.get(&oid) {
            return Ok(k.clone());
        }
        let mut kind = ValueKind::Text;
        let mut current = oid;
        // Follow domains and array elements a few levels down.
        let mut wrap_array = 0;
        for _ in 0..8 {
            if let Some(k) = ValueKind::builtin(current) {
                kind = k;
                break;
            }
            let row = self
                .client
                .query_opt(
                    "SELECT typtype::text, typcategory::text, typelem, typbasetype \
                     FROM pg_type WHERE oid = $1",
                    &[&current],
                )
                .await
                .map_err(|e| self.err("reading pg_type", e))?;
            let Some(row) = row else { break };
            let typtype: String = row.get(0);
            let category: String = row.get(1);
            let elem: u32 = row.get(2);
            let base: u32 = row.get(3);
            if typtype == "d" && base != 0 {
                current = base;
            } else if category == "A" && elem != 0 {
                wrap_array += 1;
                current = elem;
            } else {
                break;
            }
        }
        for _ in 0..wrap_array {
            kind = ValueKind::Array(Box::new(kind));
        }
        // Multi-dimensional arrays are one array type in PostgreSQL.
        if let ValueKind::Array(inner) = &kind {
            if let ValueKind::Array(_) = **inner {
                kind = (**inner).clone();
            }
        }
        self.kinds.insert(oid, kind.clone());
        Ok(kind)
    }

    /// The columns that identify a row, in order: the replica identity index when the table
    /// uses one, else the primary key; empty when there is neither (REPLICA IDENTITY FULL).
    pub async fn key_columns(&mut self, oid: u32) -> Result<Vec<String>, PgError> {
        self.ensure_connected().await?;
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_class c \
                 JOIN pg_index i ON i.indrelid = c.oid \
                   AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE c.oid = $1 \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&oid],
            )
            .await
            .map_err(|e| self.err("reading the table's key", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A table's shape from a Relation message of the stream, completed from the catalog.
    pub async fn relation_schema(
        &mut self,
        rel: &RelationMsg,
    ) -> Result<Arc<TableSchema>, PgError> {
        self.ensure_connected().await?;
        let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
        let mods: Vec<i32> = rel.columns.iter().map(|c| c.type_mod).collect();
        let rows = self
            .client
            .query(
                "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int4[]) \
                 WITH ORDINALITY AS u(t, m, o) ORDER BY o",
                &[&oids, &mods],
            )
            .await
            .map_err(|e| self.err("formatting column types", e))?;
        let mut columns = Vec::with_capacity(rel.columns.len());
        for (c, row) in rel.columns.iter().zip(rows) {
            columns.push(Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_mod: c.type_mod,
                type_name: row
                    .get::<_, Option<String>>(0)
                    .unwrap_or_else(|| "text".into()),
                kind: self.kind_of(c.type_oid).await?,
            });
        }
        let names = self.key_columns(rel.oid).await?;
        let mut key: Vec<usize> = names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let keyless = names.is_empty();
        if key.is_empty() || key.len() != names.len() {
            key = rel
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.flags & 1 != 0)
                .map(|(i, _)| i)
                .collect();
        }
        let schema = if rel.namespace.is_empty() {
            "pg_catalog".to_string()
        } else {
            rel.namespace.clone()
        };
        Ok(Arc::new(TableSchema {
            oid: rel.oid,
            schema,
            name: rel.name.clone(),
            columns,
            key,
            keyless,
        }))
    }

    /// The relation's OID.
    pub async fn table_oid(&mut self, t: &TableName) -> Result<Option<u32>, PgError> {
        self.ensure_connected().await?;
        let row = self
            .client
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| self.err("looking up a table", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The table's published columns as the catalog has them now (for the snapshot).
    pub async fn table_schema(
        &mut self,
        t: &TableName,
        publication: &str,
    ) -> Result<Arc<TableSchema>, CaptureError> {
        let oid = self
            .table_oid(t)
            .await?
            .ok_or_else(|| CaptureError::NoTable {
                table: t.to_string(),
                target: self.url.target(),
            })?;
        self.ensure_connected().await?;
        // PostgreSQL 15 publications may publish a column subset (`attnames`); older servers
        // have no such column (undefined_column): all columns are published there.
        let published: Option<Vec<String>> = match self
            .client
            .query_opt(
                "SELECT attnames::text[] FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &t.schema, &t.name],
            )
            .await
        {
            Ok(row) => row.and_then(|r| r.get(0)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => None,
            Err(e) => return Err(self.err("reading the table's published columns", e).into()),
        };
        let rows = self
            .client
            .query(
                "SELECT attname::text, atttypid, atttypmod, format_type(atttypid, atttypmod) \
                 FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
                 AND attgenerated = '' ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(|e| self.err("reading the table's columns", e))?;
        let mut columns = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.get(0);
            if let Some(p) = &published {
                if !p.contains(&name) {
                    continue;
                }
            }
            let type_oid: u32 = r.get(1);
            columns.push(Column {
                name,
                type_oid,
                type_mod: r.get(2),
                type_name: r.get(3),
                kind: self.kind_of(type_oid).await?,
            });
        }
        let names = self.key_columns(oid).await?;
        let mut key: Vec<usize> = names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let keyless = key.is_empty();
        if keyless {
            // REPLICA IDENTITY FULL without a key: the whole row identifies it.
            key = (0..columns.len()).collect();
        }
        Ok(Arc::new(TableSchema {
            oid,
            schema: t.schema.clone(),
            name: t.name.clone(),
            columns,
            key,
            keyless,
        }))
    }
}
