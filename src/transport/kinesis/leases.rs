//! Shard leases: each shard is read by one consumer, which holds it as a PostgreSQL advisory
//! lock on a dedicated warehouse connection. A lease dies with its holder's connection, so the
//! shards of a killed consumer are taken over by the others within seconds. Consumers announce
//! themselves with a heartbeat, and each holds about its fair share of the shards.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::pg::{PgError, PgUrl};

pub struct Leases {
    url: PgUrl,
    client: Option<Client>,
    stream: String,
    pub id: String,
    held: BTreeSet<String>,
}

impl Leases {
    pub fn new(url: PgUrl, stream: &str, id: &str) -> Self {
        Self {
            url,
            client: None,
            stream: stream.into(),
            id: id.into(),
            held: BTreeSet::new(),
        }
    }

    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// The lease connection; when it was lost, so were the leases.
    async fn conn(&mut self) -> Result<&Client, PgError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            old => {
                if old.is_some() && !self.held.is_empty() {
                    tracing::warn!(
                        shards = self.held.len(),
                        "the lease connection dropped: its shards are released"
                    );
                }
                self.held.clear();
                self.url.connect().await?
            }
        };
        Ok(self.client.insert(client))
    }

    /// Announces this consumer; returns how many are alive (including this one).
    pub async fn heartbeat(&mut self) -> Result<i64, PgError> {
        let (stream, id, url) = (self.stream.clone(), self.id.clone(), self.url.clone());
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO totes_cdc.consumers (id, stream, heartbeat) VALUES ($1, $2, now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat = now(), stream = EXCLUDED.stream",
            &[&id, &stream],
        )
        .await
        .map_err(|e| url.query_error("announcing the consumer", e))?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM totes_cdc.consumers WHERE stream = $1 AND heartbeat > now() - interval '10 seconds'",
                &[&stream],
            )
            .await
            .map_err(|e| url.query_error("counting consumers", e))?
            .get(0);
        Ok(n.max(1))
    }

    /// Tries to take the lease of `shard`.
    pub async fn try_acquire(&mut self, shard: &str) -> Result<bool, PgError> {
        let (stream, url) = (self.stream.clone(), self.url.clone());
        let c = self.conn().await?;
        let got: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('totes_cdc:' || $1), hashtext($2))",
                &[&stream, &shard],
            )
            .await
            .map_err(|e| url.query_error("taking a shard lease", e))?
            .get(0);
        if got {
            self.held.insert(shard.to_string());
        }
        Ok(got)
    }

    /// Gives the lease of `shard` back.
    pub async fn release(&mut self, shard: &str) -> Result<(), PgError> {
        let (stream, url) = (self.stream.clone(), self.url.clone());
        if self.held.remove(shard) {
            let c = self.conn().await?;
            c.execute(
                "SELECT pg_advisory_unlock(hashtext('totes_cdc:' || $1), hashtext($2))",
                &[&stream, &shard],
            )
            .await
            .map_err(|e| url.query_error("releasing a shard lease", e))?;
        }
        Ok(())
    }

    /// Still connected (so the leases are still ours).
    pub fn alive(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }
}
