//! Where lake files go: a local directory (written atomically: temporary file, fsync, rename)
//! or an S3 bucket (PutObject from memory with a CRC32 checksum), through aws-sdk-s3 with the
//! standard AWS configuration (`AWS_ENDPOINT_URL` for an S3-compatible endpoint, which also
//! switches to path-style addressing).

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("lake directory {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 bucket \"{bucket}\" does not exist (or is in another region)")]
    NoBucket { bucket: String },
    #[error("access to s3://{bucket}/{key} was denied ({code})")]
    Denied {
        bucket: String,
        key: String,
        code: String,
    },
    #[error("S3 request for s3://{bucket}/{key} failed: {message}")]
    Transient {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("`lake` {0:?} is not a directory path or s3://bucket/prefix")]
    BadLocation(String),
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is over the {cap}-byte cap")]
    TooLarge { path: String, cap: u64 },
    #[error("{path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
}

impl crate::fix::Fix for StoreError {
    fn fix(&self) -> Option<String> {
        Some(match self {
            StoreError::Local { .. } => "set `lake` to a writable directory or s3://bucket/prefix".into(),
            StoreError::NoBucket { .. } => "create it, or fix `lake` (s3://bucket/prefix) and the AWS region".into(),
            StoreError::Denied { .. } => "grant the role s3:PutObject, s3:GetObject and s3:DeleteObject on the lake prefix, or fix the AWS credentials".into(),
            StoreError::BadLocation(_) => "give a directory path, s3://bucket/prefix, or none".into(),
            StoreError::Transient { .. }
            | StoreError::Missing { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Unreadable { .. } => return None,
        })
    }
}

impl StoreError {
    /// Unreachable or refusing stores are retried; a missing bucket or denied access is not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. } | StoreError::Local { .. }
        )
    }
}

#[derive(Clone)]
pub enum Store {
    Local(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// An S3 client from the standard AWS configuration; an S3-compatible endpoint
/// (`AWS_ENDPOINT_URL`) gets path-style addressing.
async fn s3_client() -> aws_sdk_s3::Client {
    let sdk = crate::aws::config().await;
    let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
    if sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some() {
        conf = conf.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(conf.build())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Local {
            path: root_display(),
            source: std::io::Error::other(e),
        })?
}

impl Store {
    /// Opens `location`: a directory path, or `s3://bucket/prefix`.
    pub async fn open(location: &str) -> Result<Store, StoreError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::BadLocation(location.into()));
            }
            let store = Store::S3 {
                client: s3_client().await,
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            };
            match store.check().await {
                Ok(()) => {}
                // Unreachable now: the writes retry with backoff and block the batches.
                Err(e) if e.is_transient() => tracing::warn!("lake not reachable yet: {e}"),
                Err(e) => return Err(e),
            }
            return Ok(store);
        }
        if location.is_empty() || location.contains("://") {
            return Err(StoreError::BadLocation(location.into()));
        }
        let root = PathBuf::from(location);
        std::fs::create_dir_all(&root).map_err(|e| StoreError::Local {
            path: root.display().to_string(),
            source: e,
        })?;
        Ok(Store::Local(root))
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Local(p) => p.display().to_string(),
            Store::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    fn key(prefix: &str, path: &str) -> String {
        if prefix.is_empty() {
            path.to_string()
        } else {
            format!("{prefix}/{path}")
        }
    }

    fn s3_error<E: ProvideErrorMetadata + std::fmt::Debug>(
        e: aws_sdk_s3::error::SdkError<E>,
        bucket: &str,
        key: &str,
    ) -> StoreError {
        use aws_sdk_s3::error::SdkError;
        if let SdkError::ServiceError(se) = &e {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or_default().to_string();
            if code == "NoSuchBucket" || (status == 404 && key.is_empty()) {
                return StoreError::NoBucket {
                    bucket: bucket.into(),
                };
            }
            if status == 403
                || matches!(
                    code.as_str(),
                    "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
                )
            {
                return StoreError::Denied {
                    bucket: bucket.into(),
                    key: key.into(),
                    code: if code.is_empty() {
                        status.to_string()
                    } else {
                        code
                    },
                };
            }
        }
        let message = match &e {
            SdkError::ServiceError(se) => format!(
                "{} {}",
                se.err().code().unwrap_or("error"),
                se.err().message().unwrap_or_default()
            ),
            other => format!("{other} ({other:?})"),
        };
        StoreError::Transient {
            bucket: bucket.into(),
            key: key.into(),
            message,
        }
    }

    /// Fails early, with the fix, when the bucket is missing or forbidden.
    async fn check(&self) -> Result<(), StoreError> {
        if let Store::S3 { client, bucket, .. } = self {
            client
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| Self::s3_error(e, bucket, ""))?;
        }
        Ok(())
    }

    /// Writes `data` at `path` (relative to the lake root), replacing what is there.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => {
                let (root, path) = (root.clone(), path.to_string());
                blocking(move || write_local(&root, &path, &data)).await
            }
            Store::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, path);
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(aws_sdk_s3::primitives::ByteStream::from(data))
                    .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                    .send()
                    .await
                    .map_err(|e| Self::s3_error(e, bucket, &key))?;
                Ok(())
            }
        }
    }

    /// The paths (relative to the lake root) of every object under `prefix`, for reading the
    /// lake back. Unfinished local writes (`*.tmp`) are left out.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(root) => {
                let (root, prefix) = (root.clone(), prefix.to_string());
                blocking(move || list_local(&root, &prefix)).await
            }
            Store::S3 {
                client,
                bucket,
                prefix: root,
            } => {
                let under = Self::key(root, prefix);
                let strip = if root.is_empty() {
                    String::new()
                } else {
                    format!("{root}/")
                };
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&under)
                    .into_paginator()
                    .send();
                let mut paths = Vec::new();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| Self::s3_error(e, bucket, &under))?;
                    for obj in page.contents() {
                        if let Some(key) = obj.key() {
                            paths.push(key.strip_prefix(&strip).unwrap_or(key).to_string());
                        }
                    }
                }
                Ok(paths)
            }
        }
    }

    /// Reads the object at `path` (relative to the lake root).
    pub async fn get(&self, path: &str) -> Result<Bytes, StoreError> {
        self.get_capped(path, u64::MAX).await
    }

    /// Where `location` (as an oversized record's pointer names it: a file path or
    /// `s3://bucket/key`) lies inside this store's `oversized/` prefix: its path relative to the
    /// store; `None` when it lies anywhere else. A local path is resolved first (`..`, symbolic
    /// links), so nothing outside the prefix is reachable through it.
    pub fn oversized_path(&self, location: &str) -> Option<String> {
        match self {
            Store::Local(root) => {
                let root = std::fs::canonicalize(root).ok()?;
                let at = std::fs::canonicalize(location).ok()?;
                at.strip_prefix(root.join("oversized"))
                    .ok()
                    .map(|rel| format!("oversized/{}", rel.display()))
            }
            Store::S3 { bucket, prefix, .. } => {
                let (b, key) = location.strip_prefix("s3://")?.split_once('/')?;
                let rel = if prefix.is_empty() {
                    key
                } else {
                    key.strip_prefix(prefix.as_str())?.strip_prefix('/')?
                };
                (b == bucket
                    && rel.starts_with("oversized/")
                    && !rel.split('/').any(|s| s == ".." || s == "."))
                .then(|| rel.to_string())
            }
        }
    }

    /// Reads `path`, refusing more than `cap` bytes (never reading more than `cap + 1`).
    pub async fn get_capped(&self, path: &str, cap: u64) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(root) => {
                let full = root.join(path);
                blocking(move || {
                    use std::io::Read;
                    let shown = full.display().to_string();
                    let file = std::fs::File::open(&full).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            StoreError::Missing {
                                path: shown.clone(),
                            }
                        } else {
                            StoreError::Unreadable {
                                path: shown.clone(),
                                reason: e.to_string(),
                            }
                        }
                    })?;
                    let unreadable = |reason: String| StoreError::Unreadable {
                        path: shown.clone(),
                        reason,
                    };
                    if !file
                        .metadata()
                        .map_err(|e| unreadable(e.to_string()))?
                        .is_file()
                    {
                        return Err(unreadable("not a regular file".into()));
                    }
                    let mut buf = Vec::new();
                    file.take(cap.saturating_add(1))
                        .read_to_end(&mut buf)
                        .map_err(|e| unreadable(e.to_string()))?;
                    if buf.len() as u64 > cap {
                        return Err(StoreError::TooLarge { path: shown, cap });
                    }
                    Ok(Bytes::from(buf))
                })
                .await
            }
            Store::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, path);
                let shown = format!("s3://{bucket}/{key}");
                let out = match client.get_object().bucket(bucket).key(&key).send().await {
                    Ok(out) => out,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Err(StoreError::Missing { path: shown })
                    }
                    Err(e) => return Err(Self::s3_error(e, bucket, &key)),
                };
                if out.content_length().unwrap_or(0).max(0) as u64 > cap {
                    return Err(StoreError::TooLarge { path: shown, cap });
                }
                let mut body = out.body;
                let mut buf = bytes::BytesMut::new();
                while let Some(chunk) =
                    body.try_next().await.map_err(|e| StoreError::Transient {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        message: e.to_string(),
                    })?
                {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > cap {
                        return Err(StoreError::TooLarge { path: shown, cap });
                    }
                }
                Ok(buf.freeze())
            }
        }
    }

    /// Moves the staged file `staged` to `path`, where readers see it: a rename in a directory,
    /// CopyObject and DeleteObject on S3. Publishing again what was published is fine; a staged
    /// file that is neither at `staged` nor at `path` is `Missing`.
    pub async fn publish(&self, staged: &str, path: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => {
                let (root, staged, path) = (root.clone(), staged.to_string(), path.to_string());
                blocking(move || publish_local(&root, &staged, &path)).await
            }
            Store::S3 {
                client,
                bucket,
                prefix,
            } => {
                let (from, to) = (Self::key(prefix, staged), Self::key(prefix, path));
                // Staged keys are plain ASCII (letters, digits, `._-/`): no encoding needed.
                let copied = client
                    .copy_object()
                    .bucket(bucket)
                    .key(&to)
                    .copy_source(format!("{bucket}/{from}"))
                    .send()
                    .await;
                match copied {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.code() == Some("NoSuchKey")) =>
                    {
                        let there = client.head_object().bucket(bucket).key(&to).send().await;
                        return match there {
                            Ok(_) => Ok(()),
                            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                                Err(StoreError::Missing {
                                    path: format!("s3://{bucket}/{from}"),
                                })
                            }
                            Err(e) => Err(Self::s3_error(e, bucket, &to)),
                        };
                    }
                    Err(e) => return Err(Self::s3_error(e, bucket, &to)),
                }
                self.delete(staged).await
            }
        }
    }

    /// Removes `path`; a path that is not there is fine.
    pub async fn delete(&self, path: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => match std::fs::remove_file(root.join(path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Local {
                    path: root.join(path).display().to_string(),
                    source: e,
                }),
                _ => Ok(()),
            },
            Store::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, path);
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| Self::s3_error(e, bucket, &key))?;
                Ok(())
            }
        }
    }
}

fn root_display() -> String {
    "lake".into()
}

fn list_local(root: &Path, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut paths = Vec::new();
    let mut dirs = vec![root.join(prefix)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StoreError::Local {
                    path: dir.display().to_string(),
                    source: e,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::Local {
                path: dir.display().to_string(),
                source: e,
            })?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if path.extension().is_none_or(|x| x != "tmp") {
                if let Ok(rel) = path.strip_prefix(root) {
                    let parts: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    paths.push(parts.join("/"));
                }
            }
        }
    }
    paths.sort();
    Ok(paths)
}

fn write_local(root: &Path, path: &str, data: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let target = root.join(path);
    let err = |e: std::io::Error| StoreError::Local {
        path: target.display().to_string(),
        source: e,
    };
    let dir = target.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = target.with_extension("parquet.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &target).map_err(err)?;
    sync_dir(dir).map_err(err)
}

/// Makes a rename or a new entry in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn publish_local(root: &Path, staged: &str, path: &str) -> Result<(), StoreError> {
    let (from, to) = (root.join(staged), root.join(path));
    let err = |e: std::io::Error| StoreError::Local {
        path: to.display().to_string(),
        source: e,
    };
    let dir = to.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(err)?;
    match std::fs::rename(&from, &to) {
        Ok(()) => sync_dir(dir).map_err(err),
        // Published before (by this writer before a crash, or by the shard's next owner).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.is_file() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Missing {
            path: from.display().to_string(),
        }),
        Err(e) => Err(err(e)),
    }
}
