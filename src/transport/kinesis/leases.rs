//! Shard leases: each shard is read by one consumer at a time, which holds a time-bounded lease
//! on it in `totes_cdc.shard_leases` and renews it from a task of its own. A replica that stops
//! renewing (killed, frozen, partitioned) loses its shards to the others once the lease
//! expires. Each take raises the shard's epoch, a fencing token: every batch commit checks,
//! inside its own transaction, that its owner and epoch are still the lease's
//! (`bookkeeping::hold_lease`), so a former owner's late commit is rejected and changes
//! nothing. Times are the database's clock, never the replicas'. Consumers announce themselves
//! with a heartbeat, and each holds about its fair share of the shards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg::{PgError, PgUrl};

/// Shards held: shard → epoch. Shared with the renewing task, which drops the lost ones.
type Held = Arc<Mutex<BTreeMap<String, i64>>>;

pub struct Leases {
    url: PgUrl,
    client: Option<Client>,
    stream: String,
    /// The replica's name (heartbeats, logs).
    pub id: String,
    /// The lease owner: the name and this process's start, so a restarted replica never
    /// mistakes its former self's leases for its own.
    owner: String,
    timeout: Duration,
    held: Held,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

fn lock(held: &Held) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    pub fn new(url: PgUrl, stream: &str, id: &str, timeout: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            url,
            client: None,
            stream: stream.into(),
            id: id.into(),
            owner: format!("{id}#{nanos:x}"),
            timeout,
            held: Arc::new(Mutex::new(BTreeMap::new())),
            renewer: None,
        }
    }

    /// The shards held, with their epochs.
    pub fn held(&self) -> BTreeMap<String, i64> {
        lock(&self.held).clone()
    }

    pub fn holds(&self, shard: &str) -> bool {
        lock(&self.held).contains_key(shard)
    }

    /// The epoch at which `shard` is held, if it is.
    pub fn epoch(&self, shard: &str) -> Option<i64> {
        lock(&self.held).get(shard).copied()
    }

    /// The owner name batches are fenced with.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn conn(&mut self) -> Result<&Client, PgError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.url.connect().await?,
        };
        Ok(self.client.insert(client))
    }

    /// Announces this consumer; returns how many are alive (including this one).
    pub async fn heartbeat(&mut self) -> Result<i64, PgError> {
        self.start_renewing();
        let (stream, id, url) = (self.stream.clone(), self.id.clone(), self.url.clone());
        let alive = self.timeout.as_millis() as f64;
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
                "SELECT count(*) FROM totes_cdc.consumers \
                 WHERE stream = $1 AND heartbeat > now() - $2 * interval '1 millisecond'",
                &[&stream, &alive],
            )
            .await
            .map_err(|e| url.query_error("counting consumers", e))?
            .get(0);
        Ok(n.max(1))
    }

    /// Tries to take the lease of `shard`: free, released or expired. Returns its new epoch.
    pub async fn try_acquire(&mut self, shard: &str) -> Result<Option<i64>, PgError> {
        let (stream, owner, url) = (self.stream.clone(), self.owner.clone(), self.url.clone());
        let ms = self.timeout.as_millis() as f64;
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO totes_cdc.shard_leases (stream, shard_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&stream, &shard],
        )
        .await
        .map_err(|e| url.query_error("taking a shard lease", e))?;
        // NOWAIT-like: a lease row locked by its owner's commit is taken at a later round.
        let row = c
            .query_opt(
                "WITH free AS (SELECT stream, shard_id FROM totes_cdc.shard_leases \
                   WHERE stream = $1 AND shard_id = $2 \
                     AND (owner IS NULL OR expires_at < clock_timestamp()) \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE totes_cdc.shard_leases l SET owner = $3, epoch = l.epoch + 1, \
                   expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                 FROM free WHERE l.stream = free.stream AND l.shard_id = free.shard_id \
                 RETURNING l.epoch",
                &[&stream, &shard, &owner, &ms],
            )
            .await
            .map_err(|e| url.query_error("taking a shard lease", e))?;
        let epoch: Option<i64> = row.map(|r| r.get(0));
        if let Some(e) = epoch {
            lock(&self.held).insert(shard.to_string(), e);
        }
        Ok(epoch)
    }

    /// Gives the lease of `shard` back: another replica may take it at once.
    pub async fn release(&mut self, shard: &str) -> Result<(), PgError> {
        let Some(epoch) = lock(&self.held).remove(shard) else {
            return Ok(());
        };
        let (stream, owner, url) = (self.stream.clone(), self.owner.clone(), self.url.clone());
        let c = self.conn().await?;
        c.execute(
            "UPDATE totes_cdc.shard_leases SET owner = NULL, expires_at = '-infinity' \
             WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND epoch = $4",
            &[&stream, &shard, &owner, &epoch],
        )
        .await
        .map_err(|e| url.query_error("releasing a shard lease", e))?;
        Ok(())
    }

    /// Drops `shard` without giving it back (another replica holds it now).
    pub fn forget(&mut self, shard: &str) {
        lock(&self.held).remove(shard);
    }

    /// Gives every lease back (a graceful stop hands the shards over at once).
    pub async fn release_all(&mut self) -> Result<(), PgError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let shards: Vec<String> = self.held().into_keys().collect();
        for s in shards {
            self.release(&s).await?;
        }
        Ok(())
    }

    /// Renews the held leases every third of the timeout, on a connection of its own, so a
    /// long batch keeps them. Those another replica took meanwhile, or that could not be
    /// renewed before they expired, are dropped from `held`.
    fn start_renewing(&mut self) {
        if self.renewer.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let (url, stream, owner, timeout, held) = (
            self.url.clone(),
            self.stream.clone(),
            self.owner.clone(),
            self.timeout,
            self.held.clone(),
        );
        self.renewer = Some(tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(timeout / 3).await;
                let wanted = lock(&held).clone();
                if wanted.is_empty() {
                    renewed = Instant::now();
                    continue;
                }
                match renew(&url, &mut client, &stream, &owner, timeout, &wanted).await {
                    Ok(kept) => {
                        renewed = Instant::now();
                        let mut h = lock(&held);
                        for (shard, epoch) in &wanted {
                            if !kept.contains(shard) && h.get(shard) == Some(epoch) {
                                tracing::warn!(%shard, "the shard lease was lost to another consumer");
                                h.remove(shard);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("renewing the shard leases failed: {e}");
                        if renewed.elapsed() >= timeout {
                            tracing::warn!(
                                shards = wanted.len(),
                                "the shard leases expired unrenewed: their shards are left to the others"
                            );
                            lock(&held).clear();
                        }
                    }
                }
            }
        }));
    }
}

/// One renewal: the shards whose lease this owner still holds at its epoch.
async fn renew(
    url: &PgUrl,
    client: &mut Option<Client>,
    stream: &str,
    owner: &str,
    timeout: Duration,
    held: &BTreeMap<String, i64>,
) -> Result<Vec<String>, PgError> {
    let c = match client.take() {
        Some(c) if !c.is_closed() => c,
        _ => url.connect().await?,
    };
    let c = client.insert(c);
    let shards: Vec<&str> = held.keys().map(String::as_str).collect();
    let epochs: Vec<i64> = held.values().copied().collect();
    let ms = timeout.as_millis() as f64;
    let rows = c
        .query(
            "UPDATE totes_cdc.shard_leases l \
             SET expires_at = clock_timestamp() + $5 * interval '1 millisecond' \
             FROM unnest($3::text[], $4::bigint[]) AS h(shard, epoch) \
             WHERE l.stream = $1 AND l.owner = $2 AND l.shard_id = h.shard AND l.epoch = h.epoch \
             RETURNING l.shard_id",
            &[&stream, &owner, &shards, &epochs, &ms],
        )
        .await
        .map_err(|e| url.query_error("renewing the shard leases", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

impl Drop for Leases {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}
