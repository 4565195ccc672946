//! The buffer on sled 0.34.
//!
//! Layout: tree `batches` maps a batch's sequence number (8 bytes, big-endian, so key order is
//! send order) to `readings: u32 LE | batch wire bytes`; tree `meta` holds `next_seq`, so sequence
//! numbers keep increasing after every batch was acknowledged and the buffer restarted empty.
//!
//! Durability: `append` returns after sled's flush, which survives a process crash (kill -9) but,
//! being `sync_file_range` rather than `fsync`, not necessarily a power cut (see
//! docs/architecture.md). Removal after an ack is flushed lazily: a crash can resurrect an acked
//! batch, which is then sent again and deduplicated by the collector.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use edgeloop_shared::{
    batch::Batch,
    model::{Event, Reading},
};

const NEXT_SEQ: &[u8] = b"next_seq";

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot open the buffer in {path}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("buffer i/o failed while {doing}")]
    Io { doing: &'static str, source: sled::Error },
    #[error("batch {seq} cannot be encoded")]
    Encode { seq: u64, source: edgeloop_shared::model::WireError },
}

/// A batch as stored, ready to send.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub seq: u64,
    pub readings: u32,
    pub payload: Vec<u8>,
}

/// Cheap to clone: every clone is the same open database.
#[derive(Clone)]
pub struct Buffer {
    db: sled::Db,
    batches: sled::Tree,
    meta: sled::Tree,
    next_seq: Arc<AtomicU64>,
}

fn io(doing: &'static str) -> impl FnOnce(sled::Error) -> BufferError {
    move |source| BufferError::Io { doing, source }
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, BufferError> {
        let open_err = |source| BufferError::Open { path: dir.into(), source };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(open_err)?;
        let batches = db.open_tree("batches").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let stored_next = meta
            .get(NEXT_SEQ)
            .map_err(open_err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let after_last = batches.last().map_err(open_err)?.and_then(|(k, _)| key_seq(&k)).map_or(0, |s| s + 1);
        let next_seq = stored_next.max(after_last);
        Ok(Self { db, batches, meta, next_seq: Arc::new(AtomicU64::new(next_seq)) })
    }

    /// Seals `readings` into batches of at most `per_batch` readings (the events go into the
    /// first) and commits them durably. Returns the sequence number of the last batch written.
    pub async fn append(
        &self,
        agent: &str,
        tags: &[(String, String)],
        readings: &[Reading],
        events: Vec<Event>,
        per_batch: usize,
    ) -> Result<u64, BufferError> {
        let mut write = sled::Batch::default();
        let mut last = 0;
        let mut events = Some(events);
        let chunks: Vec<&[Reading]> =
            if readings.is_empty() { vec![&[]] } else { readings.chunks(per_batch.max(1)).collect() };
        for chunk in chunks {
            let seq = self.next_seq.fetch_add(1, Relaxed);
            let mut batch = Batch::from_readings(agent, seq, chunk);
            batch.events = events.take().unwrap_or_default();
            batch.tags = tags.to_vec();
            let payload = batch.encode().map_err(|source| BufferError::Encode { seq, source })?;
            let mut value = Vec::with_capacity(4 + payload.len());
            value.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            value.extend_from_slice(&payload);
            write.insert(&seq.to_be_bytes(), value);
            last = seq;
        }
        self.meta.insert(NEXT_SEQ, &(last + 1).to_be_bytes()).map_err(io("recording the next sequence number"))?;
        self.batches.apply_batch(write).map_err(io("writing batches"))?;
        self.db.flush_async().await.map_err(io("flushing"))?;
        Ok(last)
    }

    /// Up to `max` stored batches with a sequence number above `after` (all when `None`), oldest first.
    pub fn next_after(&self, after: Option<u64>, max: usize) -> Result<Vec<StoredBatch>, BufferError> {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        for entry in self.batches.range(start.to_be_bytes()..).take(max) {
            let (k, v) = entry.map_err(io("reading batches"))?;
            let Some(seq) = key_seq(&k) else { continue };
            let Some((count, payload)) = v.split_first_chunk::<4>() else {
                continue;
            };
            out.push(StoredBatch { seq, readings: u32::from_le_bytes(*count), payload: payload.to_vec() });
        }
        Ok(out)
    }

    /// Drops an acknowledged batch; returns how many readings it held (`None` if already gone).
    pub fn remove(&self, seq: u64) -> Result<Option<u32>, BufferError> {
        let old = self.batches.remove(seq.to_be_bytes()).map_err(io("removing an acknowledged batch"))?;
        Ok(old.and_then(|v| v.first_chunk::<4>().map(|c| u32::from_le_bytes(*c))))
    }

    /// Batches and readings held, by scanning the store (used once at start-up).
    pub fn backlog(&self) -> Result<(u64, u64), BufferError> {
        let mut batches = 0;
        let mut readings = 0;
        for entry in self.batches.iter() {
            let (_, v) = entry.map_err(io("counting the backlog"))?;
            batches += 1;
            readings += v.first_chunk::<4>().map_or(0, |c| u32::from_le_bytes(*c) as u64);
        }
        Ok((batches, readings))
    }

    /// Another tree of the same database (e.g. the rules' latches), flushed with it.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, BufferError> {
        self.db.open_tree(name).map_err(io("opening a tree"))
    }

    /// Flushes everything (acks included), e.g. at shutdown.
    pub async fn flush(&self) -> Result<(), BufferError> {
        self.db.flush_async().await.map_err(io("flushing")).map(|_| ())
    }
}

fn key_seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(n: usize) -> Vec<Reading> {
        (0..n).map(|i| Reading { sensor: format!("s{}", i % 3), ts_ns: i as i64, value: i as f64 }).collect()
    }

    #[tokio::test]
    async fn batches_survive_reopen_and_sequence_numbers_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path(), 4 << 20).unwrap();
        assert_eq!(buf.append("gw", &[], &readings(25), vec![], 10).await.unwrap(), 2);
        let stored = buf.next_after(None, 10).unwrap();
        assert_eq!(stored.iter().map(|b| (b.seq, b.readings)).collect::<Vec<_>>(), [(0, 10), (1, 10), (2, 5)]);
        let batch = Batch::decode(&stored[2].payload).unwrap();
        assert_eq!((batch.agent.as_str(), batch.seq, batch.point_count()), ("gw", 2, 5));
        assert_eq!(buf.next_after(Some(0), 10).unwrap().len(), 2);

        for seq in 0..3 {
            assert!(buf.remove(seq).unwrap().is_some());
        }
        assert_eq!(buf.remove(1).unwrap(), None);
        buf.flush().await.unwrap();
        drop(buf);

        let buf = Buffer::open(dir.path(), 4 << 20).unwrap();
        assert_eq!(buf.backlog().unwrap(), (0, 0));
        assert_eq!(
            buf.append("gw", &[], &readings(1), vec![], 10).await.unwrap(),
            3,
            "seq continues after a drained restart"
        );
    }
}
