//! The buffer on sled 0.34.
//!
//! Layout: two lanes, each a tree mapping a batch's sequence number (8 bytes, big-endian, so key
//! order is send order) to `readings: u32 LE | batch wire bytes`: `events` (trips, resets, stale
//! sensors: sent first, ahead of any backlog) and `batches` (telemetry). Tree `meta` holds
//! `next_seq`, so sequence numbers keep increasing after every batch was acknowledged and the
//! buffer restarted empty; both lanes share the numbering, so an ack names one batch.
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

/// A priority lane of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Events and alerts: sent before any telemetry, never dropped for space.
    Events,
    Telemetry,
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
    events: sled::Tree,
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
        let events = db.open_tree("events").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let stored_next = meta
            .get(NEXT_SEQ)
            .map_err(open_err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let mut next_seq = stored_next;
        for tree in [&batches, &events] {
            let after_last = tree.last().map_err(open_err)?.and_then(|(k, _)| key_seq(&k)).map_or(0, |s| s + 1);
            next_seq = next_seq.max(after_last);
        }
        Ok(Self { db, batches, events, meta, next_seq: Arc::new(AtomicU64::new(next_seq)) })
    }

    /// Seals `readings` into telemetry batches of at most `per_batch` readings, and `events`
    /// into one batch of the events lane, and commits them durably. Returns the sequence number of
    /// the last batch written.
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
        if readings.is_empty() && events.is_empty() {
            return Ok(self.next_seq.load(Relaxed).saturating_sub(1));
        }
        for chunk in readings.chunks(per_batch.max(1)) {
            let seq = self.next_seq.fetch_add(1, Relaxed);
            let mut batch = Batch::from_readings(agent, seq, chunk);
            batch.tags = tags.to_vec();
            write.insert(&seq.to_be_bytes(), stored_value(&batch, chunk.len())?);
            last = seq;
        }
        let mut event_write = sled::Batch::default();
        if !events.is_empty() {
            let seq = self.next_seq.fetch_add(1, Relaxed);
            let batch = Batch { agent: agent.into(), seq, tags: tags.to_vec(), series: Vec::new(), events };
            event_write.insert(&seq.to_be_bytes(), stored_value(&batch, 0)?);
            last = last.max(seq);
        }
        let next = self.next_seq.load(Relaxed);
        self.meta.insert(NEXT_SEQ, &next.to_be_bytes()).map_err(io("recording the next sequence number"))?;
        self.batches.apply_batch(write).map_err(io("writing batches"))?;
        self.events.apply_batch(event_write).map_err(io("writing events"))?;
        self.db.flush_async().await.map_err(io("flushing"))?;
        Ok(last)
    }

    fn lane(&self, lane: Lane) -> &sled::Tree {
        match lane {
            Lane::Events => &self.events,
            Lane::Telemetry => &self.batches,
        }
    }

    /// Up to `max` stored batches of `lane` with a sequence number above `after` (all when
    /// `None`), oldest first.
    pub fn next_after(&self, lane: Lane, after: Option<u64>, max: usize) -> Result<Vec<StoredBatch>, BufferError> {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        for entry in self.lane(lane).range(start.to_be_bytes()..).take(max) {
            let (k, v) = entry.map_err(io("reading batches"))?;
            let Some(seq) = key_seq(&k) else { continue };
            let Some((count, payload)) = v.split_first_chunk::<4>() else {
                continue;
            };
            out.push(StoredBatch { seq, readings: u32::from_le_bytes(*count), payload: payload.to_vec() });
        }
        Ok(out)
    }

    /// Drops an acknowledged batch from whichever lane holds it; returns how many readings it
    /// held (`None` if already gone).
    pub fn remove(&self, seq: u64) -> Result<Option<u32>, BufferError> {
        for tree in [&self.events, &self.batches] {
            if let Some(v) = tree.remove(seq.to_be_bytes()).map_err(io("removing an acknowledged batch"))? {
                return Ok(Some(v.first_chunk::<4>().map_or(0, |c| u32::from_le_bytes(*c))));
            }
        }
        Ok(None)
    }

    /// Batches (both lanes) and readings held, by scanning the store (used once at start-up).
    pub fn backlog(&self) -> Result<(u64, u64), BufferError> {
        let mut batches = 0;
        let mut readings = 0;
        for entry in self.batches.iter().chain(self.events.iter()) {
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

fn stored_value(batch: &Batch, readings: usize) -> Result<Vec<u8>, BufferError> {
    let payload = batch.encode().map_err(|source| BufferError::Encode { seq: batch.seq, source })?;
    let mut value = Vec::with_capacity(4 + payload.len());
    value.extend_from_slice(&(readings as u32).to_le_bytes());
    value.extend_from_slice(&payload);
    Ok(value)
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
    async fn events_go_to_their_own_lane_and_share_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path(), 4 << 20).unwrap();
        let event = Event {
            ts_ns: 1,
            kind: edgeloop_shared::model::EventKind::Trip,
            severity: edgeloop_shared::model::Severity::Trip,
            subject: "hot".into(),
            message: "t > 90".into(),
            values: vec![],
        };
        buf.append("gw", &[], &readings(20), vec![], 10).await.unwrap();
        assert_eq!(buf.append("gw", &[], &readings(5), vec![event.clone()], 10).await.unwrap(), 3);
        let lane = buf.next_after(Lane::Events, None, 10).unwrap();
        assert_eq!(lane.iter().map(|b| (b.seq, b.readings)).collect::<Vec<_>>(), [(3, 0)]);
        assert_eq!(Batch::decode(&lane[0].payload).unwrap().events, vec![event]);
        assert_eq!(buf.next_after(Lane::Telemetry, None, 10).unwrap().len(), 3);
        assert_eq!(buf.remove(3).unwrap(), Some(0), "an ack removes from whichever lane");
        assert_eq!(buf.backlog().unwrap(), (3, 25));
    }

    #[tokio::test]
    async fn batches_survive_reopen_and_sequence_numbers_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path(), 4 << 20).unwrap();
        assert_eq!(buf.append("gw", &[], &readings(25), vec![], 10).await.unwrap(), 2);
        let stored = buf.next_after(Lane::Telemetry, None, 10).unwrap();
        assert_eq!(stored.iter().map(|b| (b.seq, b.readings)).collect::<Vec<_>>(), [(0, 10), (1, 10), (2, 5)]);
        let batch = Batch::decode(&stored[2].payload).unwrap();
        assert_eq!((batch.agent.as_str(), batch.seq, batch.point_count()), ("gw", 2, 5));
        assert_eq!(buf.next_after(Lane::Telemetry, Some(0), 10).unwrap().len(), 2);
        assert!(buf.next_after(Lane::Events, None, 10).unwrap().is_empty());

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
