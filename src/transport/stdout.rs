//! Debugging sinks: `stdout` prints one JSON envelope per line and acknowledges once the lines
//! are written and flushed; `null` acknowledges at once and prints nothing (for benchmarks).

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::channel::{Acker, Item, ItemKind};
use crate::event::json::write_envelope;

/// Writes envelopes to `out`, one per line; acknowledges after each flush.
pub async fn run_writer<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Item>,
    acker: Acker,
    database: String,
    mut out: W,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut last = 0;
    while let Some(item) = rx.recv().await {
        last = item.seqno;
        if let ItemKind::Change(ev) = &item.kind {
            write_envelope(&mut buf, ev, &database);
            buf.push(b'\n');
        }
        // Flush and acknowledge when the channel is momentarily empty or the buffer is large,
        // so acknowledgements keep flowing under a steady stream too.
        if rx.is_empty() || buf.len() >= 60 * 1024 {
            out.write_all(&buf).await?;
            buf.clear();
            out.flush().await?;
            acker.ack(last);
        }
    }
    out.write_all(&buf).await?;
    out.flush().await?;
    acker.ack(last);
    Ok(())
}

/// Acknowledges every item as it arrives.
pub async fn run_null(mut rx: mpsc::Receiver<Item>, acker: Acker) {
    let mut buf = Vec::with_capacity(256);
    while let Some(item) = rx.recv().await {
        let last = item.seqno;
        buf.push(item);
        // Take what is queued in one go; acknowledging per item would cost more than the sink.
        while buf.len() < 256 {
            match rx.try_recv() {
                Ok(i) => buf.push(i),
                Err(_) => break,
            }
        }
        let last = buf.last().map_or(last, |i| i.seqno);
        buf.clear();
        acker.ack(last);
    }
}
