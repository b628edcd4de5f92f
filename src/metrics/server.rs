//! `/metrics` (Prometheus text format), `/healthz` (the process is alive) and `/readyz`
//! (connected and making progress), on a small HTTP/1.1 server: GET only, one response per
//! connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::Encoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What `/readyz` reports: each component that must be up, and warnings that do not make the
/// process unready but an operator must see (slot retention).
#[derive(Default)]
pub struct Health {
    /// component → (ready, detail)
    parts: Mutex<BTreeMap<&'static str, (bool, String)>>,
    warnings: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Declares `part` as required and sets its state.
    pub fn set(&self, part: &'static str, ready: bool, detail: impl Into<String>) {
        if let Ok(mut p) = self.parts.lock() {
            p.insert(part, (ready, detail.into()));
        }
    }

    pub fn warn(&self, key: &'static str, message: Option<String>) {
        if let Ok(mut w) = self.warnings.lock() {
            match message {
                Some(m) => {
                    w.insert(key, m);
                }
                None => {
                    w.remove(key);
                }
            }
        }
    }

    /// Ready when every declared part is; the text lists each part and the warnings.
    pub fn report(&self) -> (bool, String) {
        let mut ready = true;
        let mut out = String::new();
        if let Ok(p) = self.parts.lock() {
            if p.is_empty() {
                ready = false;
                out.push_str("starting\n");
            }
            for (name, (ok, detail)) in p.iter() {
                ready &= *ok;
                out.push_str(&format!(
                    "{name}: {} {detail}\n",
                    if *ok { "ok" } else { "NOT READY" }
                ));
            }
        }
        if let Ok(w) = self.warnings.lock() {
            for (name, m) in w.iter() {
                out.push_str(&format!("warning {name}: {m}\n"));
            }
        }
        (ready, out)
    }
}

fn refresh_process_metrics() {
    let m = super::get();
    if let Some(rss) = super::resident_bytes() {
        m.resident_memory_bytes.set(rss);
    }
    m.open_connections.set(super::open_connections());
}

/// Connections served at once; more are closed as they come, so idle or slow clients cannot
/// exhaust memory or descriptors.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send its request head, and to take the answer: an idle
/// socket is closed after this, so it cannot hold its slot.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, typically: give the open ones a moment to close.
                tracing::debug!("metrics accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (the path is all we need), within the time allowed.
            let head = async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            };
            if tokio::time::timeout(IO_TIMEOUT, head).await.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, content_type, body) = match path.split('?').next().unwrap_or("/") {
                "/metrics" => {
                    refresh_process_metrics();
                    let mut out = Vec::new();
                    let encoder = prometheus::TextEncoder::new();
                    let _ = encoder.encode(&super::get().registry.gather(), &mut out);
                    ("200 OK", encoder.format_type().to_string(), out)
                }
                "/healthz" => ("200 OK", "text/plain".into(), b"ok\n".to_vec()),
                "/readyz" => {
                    let (ready, text) = health.report();
                    (
                        if ready {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        "text/plain".into(),
                        text.into_bytes(),
                    )
                }
                _ => (
                    "404 Not Found",
                    "text/plain".into(),
                    b"not found\n".to_vec(),
                ),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A client that does not take the answer in time is dropped: nothing depends on it.
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                sock.write_all(header.as_bytes()).await?;
                sock.write_all(&body).await?;
                sock.shutdown().await
            })
            .await;
        });
    }
}
