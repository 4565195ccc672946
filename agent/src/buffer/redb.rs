//! The buffer on redb: one file, `buffer.redb`, in the agent's data directory.
//!
//! Tables: `events` and `telemetry`, the two priority lanes, map a batch's sequence number to its
//! stored value; both lanes share the numbering, so an ack names one batch. `meta` holds the
//! running [`Totals`] (next sequence number, readings accepted, dropped, quarantined, held), always
//! written in the same transaction as the batches they count, so they survive a crash exactly as
//! the batches do. `meta` also holds the buffer's identity (`buffer_id`, random, made when the
//! file is created or salvaged), which every batch carries: the collector's duplicate filter and
//! the acks are keyed by it, so a new file restarting at sequence 0 is never taken for the old
//! one. `quarantine` keeps entries that failed their checksum; `latches` the rules' latched trips
//! (written by [`super::latches`]).
//!
//! A stored value is `crc32c u32 | readings u32 | oldest ts i64 | batch wire bytes` (LE); the
//! CRC covers everything after itself. redb checksums its pages but not what it hands back
//! from a damaged one, so the agent checks each entry itself.
//!
//! Durability: an append commits with `Durability::Immediate` (redb's fsync), so an accepted
//! reading survives a process crash and a power cut on storage that honours fsync. Removals
//! after an ack commit with `Durability::None`: a crash can bring an acknowledged batch back,
//! which is then sent again and stored idempotently. Why redb and not sled: see
//! docs/architecture.md ("The buffer").

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ::redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    WriteTransaction,
};
use edgeloop_shared::{
    batch::Batch,
    clock::now_ns,
    model::{Event, EventKind, Reading, Severity},
};
use serde::Deserialize;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TELEMETRY: TableDefinition<u64, &[u8]> = TableDefinition::new("telemetry");
const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Not one of the [`Totals`]: a salvage copies those into the new file, never the identity.
const BUFFER_ID: &str = "buffer_id";

/// The buffer's file inside the data directory.
pub const FILE: &str = "buffer.redb";
const HEADER: usize = 16;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot create the data directory {path}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the buffer {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("buffer i/o failed while {doing}: {reason}")]
    Io { doing: &'static str, reason: String },
    #[error("batch {seq} cannot be encoded")]
    Encode { seq: u64, source: edgeloop_shared::model::WireError },
    #[error("the buffer task stopped unexpectedly while {doing}")]
    Task { doing: &'static str },
    #[error("no random numbers from the operating system for the buffer identity of {path}: {reason}")]
    Random { path: PathBuf, reason: String },
}

pub(super) fn io<E: std::fmt::Display>(doing: &'static str) -> impl FnOnce(E) -> BufferError {
    move |e| BufferError::Io { doing, reason: e.to_string() }
}

/// A priority lane of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Events and alerts: sent before any telemetry, never dropped for space.
    Events,
    Telemetry,
}

impl Lane {
    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Lane::Events => EVENTS,
            Lane::Telemetry => TELEMETRY,
        }
    }
}

/// What to do with new telemetry when the buffer holds `max_bytes`. Events are never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Drop the oldest telemetry batches to make room: the newest data is kept.
    #[default]
    DropOldest,
    /// Refuse the new telemetry: the oldest data is kept.
    RejectNew,
}

#[derive(Debug, Clone)]
pub struct BufferSettings {
    pub agent: String,
    /// Tags put on every batch.
    pub tags: Vec<(String, String)>,
    /// The most bytes of batches (both lanes, as stored) the buffer holds.
    pub max_bytes: u64,
    pub when_full: WhenFull,
    /// redb's page cache.
    pub cache_bytes: usize,
    /// Verify every page's checksum when opening (reads the whole file once).
    pub verify_on_open: bool,
    /// Drops are reported in one `dropped` event per this interval at most, so a buffer that
    /// stays full does not fill itself with reports.
    pub drop_report_interval: std::time::Duration,
}

/// Running counts, persisted with the batches they describe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub next_seq: u64,
    /// Readings ever written to the buffer (accepted), over the agent's life.
    pub accepted_readings: u64,
    pub accepted_events: u64,
    /// Accepted readings later dropped to make room (`drop_oldest`).
    pub dropped_readings: u64,
    /// Readings refused because the buffer was full (`reject_new`); never accepted.
    pub refused_readings: u64,
    /// Batches set aside as unreadable.
    pub quarantined_batches: u64,
    /// What the buffer holds now, both lanes.
    pub held_batches: u64,
    pub held_readings: u64,
    pub held_bytes: u64,
    /// Drops not reported yet (they go out with the next `dropped` event).
    pub unreported_dropped: u64,
    pub unreported_refused: u64,
    pub last_drop_report_ns: u64,
}

const TOTAL_KEYS: [&str; 12] = [
    "next_seq",
    "accepted_readings",
    "accepted_events",
    "dropped_readings",
    "refused_readings",
    "quarantined_batches",
    "held_batches",
    "held_readings",
    "held_bytes",
    "unreported_dropped",
    "unreported_refused",
    "last_drop_report_ns",
];

impl Totals {
    fn fields(&mut self) -> [&mut u64; 12] {
        [
            &mut self.next_seq,
            &mut self.accepted_readings,
            &mut self.accepted_events,
            &mut self.dropped_readings,
            &mut self.refused_readings,
            &mut self.quarantined_batches,
            &mut self.held_batches,
            &mut self.held_readings,
            &mut self.held_bytes,
            &mut self.unreported_dropped,
            &mut self.unreported_refused,
            &mut self.last_drop_report_ns,
        ]
    }

    fn load(tx: &WriteTransaction) -> Result<Self, StorageErrorText> {
        let meta = tx.open_table(META).map_err(text)?;
        let mut t = Totals::default();
        for (key, field) in TOTAL_KEYS.iter().zip(t.fields()) {
            *field = meta.get(key).map_err(text)?.map_or(0, |v| v.value());
        }
        Ok(t)
    }

    fn store(mut self, tx: &WriteTransaction) -> Result<(), StorageErrorText> {
        let mut meta = tx.open_table(META).map_err(text)?;
        for (key, field) in TOTAL_KEYS.iter().zip(self.fields()) {
            meta.insert(key, *field).map_err(text)?;
        }
        Ok(())
    }

    fn hold(&mut self, readings: u32, bytes: usize) {
        self.held_batches += 1;
        self.held_readings += u64::from(readings);
        self.held_bytes += bytes as u64;
    }

    fn release(&mut self, readings: u32, bytes: usize) {
        self.held_batches = self.held_batches.saturating_sub(1);
        self.held_readings = self.held_readings.saturating_sub(u64::from(readings));
        self.held_bytes = self.held_bytes.saturating_sub(bytes as u64);
    }
}

/// redb's errors as text: they are reported, never matched on.
type StorageErrorText = String;
fn text(e: impl std::fmt::Display) -> StorageErrorText {
    e.to_string()
}

/// A batch as stored, ready to send.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub seq: u64,
    /// The identity of the buffer that sealed it: this buffer's, or for a batch salvaged from a
    /// damaged file, that file's.
    pub buffer: u64,
    pub readings: u32,
    pub payload: Vec<u8>,
}

/// What one [`Buffer::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// The highest sequence number written.
    pub last_seq: u64,
    pub readings: u64,
    pub events: u64,
    pub dropped_readings: u64,
    pub refused_readings: u64,
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Clean,
    /// The file was damaged: it was moved to `moved_to`, and `salvaged` batches were copied
    /// out of it into a new buffer.
    Salvaged {
        moved_to: PathBuf,
        salvaged: u64,
        reason: String,
    },
}

pub(super) struct Inner {
    pub(super) db: Database,
    path: PathBuf,
    settings: BufferSettings,
    id: u64,
    /// The committed totals; held across each write transaction, so writers never interleave.
    pub(super) totals: Mutex<Totals>,
}

/// Cheap to clone: every clone is the same open database.
#[derive(Clone)]
pub struct Buffer {
    pub(super) inner: Arc<Inner>,
}

fn seal(readings: u32, oldest_ts: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&readings.to_le_bytes());
    v.extend_from_slice(&oldest_ts.to_le_bytes());
    v.extend_from_slice(payload);
    let crc = CRC.checksum(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

/// `(readings, oldest ts, payload)` of a stored value whose checksum holds.
fn unseal(v: &[u8]) -> Option<(u32, i64, &[u8])> {
    let (crc, rest) = v.split_first_chunk::<4>()?;
    if rest.len() < HEADER - 4 || CRC.checksum(rest) != u32::from_le_bytes(*crc) {
        return None;
    }
    let (readings, rest) = rest.split_first_chunk::<4>()?;
    let (oldest, payload) = rest.split_first_chunk::<8>()?;
    Some((u32::from_le_bytes(*readings), i64::from_le_bytes(*oldest), payload))
}

/// The readings a stored value claims, trusted only when its checksum holds.
fn claimed_readings(v: &[u8]) -> u32 {
    unseal(v).map_or(0, |(n, _, _)| n)
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir`. A damaged file does not stop the agent: it is
    /// moved aside, every batch that still reads back intact is copied into a new file, and a
    /// [`EventKind::Quarantined`] event reports it.
    pub fn open(dir: &Path, settings: BufferSettings) -> Result<(Self, Recovery), BufferError> {
        std::fs::create_dir_all(dir).map_err(|source| BufferError::Dir { path: dir.into(), source })?;
        let path = dir.join(FILE);
        let (db, recovery) = match open_db(&path, &settings) {
            Ok(db) => (db, Recovery::Clean),
            Err(OpenFailure::Damaged(reason)) => salvage(dir, &path, &settings, reason)?,
            Err(OpenFailure::Other(reason)) => return Err(BufferError::Open { path, reason }),
        };
        let totals = {
            let tx = db.begin_write().map_err(io("reading the totals"))?;
            let t = Totals::load(&tx).map_err(io("reading the totals"))?;
            tx.abort().map_err(io("reading the totals"))?;
            t
        };
        let id = identity(&db, &path)?;
        let buffer = Buffer { inner: Arc::new(Inner { db, path, settings, id, totals: Mutex::new(totals) }) };
        if let Recovery::Salvaged { moved_to, salvaged, reason } = &recovery {
            let lost = buffer.totals().held_batches.saturating_sub(*salvaged);
            tracing::error!(file = %moved_to.display(), salvaged, %reason, "buffer file was damaged; moved it aside and salvaged what read back intact");
            buffer.report_quarantine(
                lost.max(1),
                format!("buffer file damaged ({reason}); moved to {}; {salvaged} batches salvaged", moved_to.display()),
            )?;
        }
        Ok((buffer, recovery))
    }

    pub fn settings(&self) -> &BufferSettings {
        &self.inner.settings
    }

    /// This buffer's identity, carried by every batch it seals.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The committed totals.
    pub fn totals(&self) -> Totals {
        self.inner.totals.lock().map_or_else(|p| *p.into_inner(), |t| *t)
    }

    /// The size of the buffer's file on disk.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }

    /// Seals `readings` into telemetry batches of at most `per_batch` readings and `events` into
    /// one batch of the events lane, and commits them durably (fsync), making room first by the
    /// [`WhenFull`] policy.
    pub async fn append(
        &self,
        readings: Vec<Reading>,
        events: Vec<Event>,
        per_batch: usize,
    ) -> Result<Appended, BufferError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(&readings, events, per_batch))
            .await
            .map_err(|_| BufferError::Task { doing: "appending" })?
    }

    /// Reports drops not reported yet now, whatever the report interval (at shutdown).
    pub async fn report_drops(&self) -> Result<Appended, BufferError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_inner(&[], Vec::new(), 1, true))
            .await
            .map_err(|_| BufferError::Task { doing: "reporting drops" })?
    }

    /// [`Buffer::append`] for callers outside the runtime (benchmarks, tools).
    pub fn append_blocking(
        &self,
        readings: &[Reading],
        events: Vec<Event>,
        per_batch: usize,
    ) -> Result<Appended, BufferError> {
        self.append_inner(readings, events, per_batch, false)
    }

    fn append_inner(
        &self,
        readings: &[Reading],
        mut events: Vec<Event>,
        per_batch: usize,
        report_now: bool,
    ) -> Result<Appended, BufferError> {
        let s = &self.inner.settings;
        let mut guard = self.inner.totals.lock().map_err(|_| BufferError::Task { doing: "appending" })?;
        let mut t = *guard;
        let report_due = t.unreported_dropped + t.unreported_refused > 0
            && (report_now
                || (now_ns().max(0) as u64).saturating_sub(t.last_drop_report_ns)
                    >= s.drop_report_interval.as_nanos() as u64);
        if readings.is_empty() && events.is_empty() && !report_due {
            return Ok(Appended { last_seq: t.next_seq.saturating_sub(1), ..Appended::default() });
        }
        let mut new: Vec<(u64, Vec<u8>, u32)> = Vec::new();
        for chunk in readings.chunks(per_batch.max(1)) {
            let seq = t.next_seq;
            t.next_seq += 1;
            let mut batch = Batch::from_readings(&s.agent, seq, chunk);
            batch.buffer = Some(self.inner.id);
            batch.tags.clone_from(&s.tags);
            let payload = batch.encode().map_err(|source| BufferError::Encode { seq, source })?;
            let oldest = chunk.iter().map(|r| r.ts_ns).min().unwrap_or(0);
            new.push((seq, seal(payload_readings(chunk), oldest, &payload), payload_readings(chunk)));
        }
        let mut out = Appended::default();
        let tx = self.begin(Durability::Immediate, "appending")?;
        {
            let mut telemetry = tx.open_table(TELEMETRY).map_err(io("appending"))?;
            let new_bytes = |new: &[(u64, Vec<u8>, u32)]| new.iter().map(|(_, v, _)| v.len() as u64).sum::<u64>();
            let over = |t: &Totals, new: &[(u64, Vec<u8>, u32)]| t.held_bytes + new_bytes(new) > s.max_bytes;
            if over(&t, &new) {
                match s.when_full {
                    WhenFull::DropOldest => {
                        while over(&t, &new) {
                            let Some((_, v)) = telemetry.pop_first().map_err(io("dropping the oldest batch"))? else {
                                break;
                            };
                            let v = v.value();
                            let n = claimed_readings(v);
                            t.release(n, v.len());
                            out.dropped_readings += u64::from(n);
                        }
                        while over(&t, &new) && !new.is_empty() {
                            let (_, _, n) = new.remove(0);
                            out.dropped_readings += u64::from(n);
                        }
                    }
                    WhenFull::RejectNew => {
                        while over(&t, &new) {
                            let Some((_, _, n)) = new.pop() else { break };
                            out.refused_readings += u64::from(n);
                        }
                    }
                }
            }
            for (seq, value, n) in &new {
                telemetry.insert(seq, value.as_slice()).map_err(io("appending"))?;
                t.hold(*n, value.len());
                out.readings += u64::from(*n);
                out.last_seq = *seq;
            }
        }
        if out.dropped_readings + out.refused_readings > 0 {
            t.dropped_readings += out.dropped_readings;
            t.refused_readings += out.refused_readings;
            t.unreported_dropped += out.dropped_readings;
            t.unreported_refused += out.refused_readings;
            tracing::warn!(agent = %s.agent, dropped = out.dropped_readings, refused = out.refused_readings, held_bytes = t.held_bytes, max_bytes = s.max_bytes, "buffer full");
        }
        let now = now_ns().max(0) as u64;
        let due = report_now || now.saturating_sub(t.last_drop_report_ns) >= s.drop_report_interval.as_nanos() as u64;
        if t.unreported_dropped + t.unreported_refused > 0 && due {
            let (dropped, refused) = (t.unreported_dropped, t.unreported_refused);
            (t.unreported_dropped, t.unreported_refused, t.last_drop_report_ns) = (0, 0, now);
            let mut what = Vec::new();
            if dropped > 0 {
                what.push(format!("dropped the oldest {dropped}"));
            }
            if refused > 0 {
                what.push(format!("refused {refused} new"));
            }
            events.push(Event {
                ts_ns: now as i64,
                kind: EventKind::Dropped { readings: dropped + refused },
                severity: Severity::Warning,
                subject: "buffer".into(),
                message: format!("buffer full ({} bytes): {} telemetry readings", s.max_bytes, what.join(" and ")),
                values: vec![("oldest_dropped".into(), dropped as f64), ("new_refused".into(), refused as f64)],
            });
        }
        if !events.is_empty() {
            out.events = events.len() as u64;
            let seq = self.put_events(&tx, &mut t, events)?;
            out.last_seq = out.last_seq.max(seq);
        }
        t.accepted_readings += out.readings;
        t.accepted_events += out.events;
        t.store(&tx).map_err(io("appending"))?;
        tx.commit().map_err(io("committing"))?;
        *guard = t;
        Ok(out)
    }

    pub(super) fn begin(&self, durability: Durability, doing: &'static str) -> Result<WriteTransaction, BufferError> {
        let mut tx = self.inner.db.begin_write().map_err(io(doing))?;
        tx.set_durability(durability).map_err(io(doing))?;
        Ok(tx)
    }

    /// Writes `events` as one batch of the events lane inside `tx`; returns its sequence number.
    fn put_events(&self, tx: &WriteTransaction, t: &mut Totals, events: Vec<Event>) -> Result<u64, BufferError> {
        let s = &self.inner.settings;
        let seq = t.next_seq;
        t.next_seq += 1;
        let oldest = events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
        let batch = Batch {
            agent: s.agent.clone(),
            buffer: Some(self.inner.id),
            seq,
            tags: s.tags.clone(),
            series: Vec::new(),
            events,
        };
        let payload = batch.encode().map_err(|source| BufferError::Encode { seq, source })?;
        let value = seal(0, oldest, &payload);
        tx.open_table(EVENTS)
            .map_err(io("writing events"))?
            .insert(seq, value.as_slice())
            .map_err(io("writing events"))?;
        t.hold(0, value.len());
        Ok(seq)
    }

    /// Up to `max` stored batches of `lane` with a sequence number in `(after, before)`, oldest
    /// first. An entry whose checksum fails is moved to quarantine, reported and skipped.
    pub async fn next_between(
        &self,
        lane: Lane,
        after: Option<u64>,
        before: u64,
        max: usize,
    ) -> Result<Vec<StoredBatch>, BufferError> {
        let (batches, damaged) = self.read_between(lane, after, before, max)?;
        if !damaged.is_empty() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.quarantine(lane, &damaged))
                .await
                .map_err(|_| BufferError::Task { doing: "quarantining" })??;
        }
        Ok(batches)
    }

    fn read_between(
        &self,
        lane: Lane,
        after: Option<u64>,
        before: u64,
        max: usize,
    ) -> Result<(Vec<StoredBatch>, Vec<u64>), BufferError> {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        if start >= before || max == 0 {
            return Ok((out, damaged));
        }
        let tx = self.inner.db.begin_read().map_err(io("reading batches"))?;
        let table = match tx.open_table(lane.table()) {
            Ok(t) => t,
            Err(::redb::TableError::TableDoesNotExist(_)) => return Ok((out, damaged)),
            Err(e) => return Err(io("reading batches")(e)),
        };
        for entry in table.range(start..before).map_err(io("reading batches"))? {
            let (k, v) = entry.map_err(io("reading batches"))?;
            let seq = k.value();
            match unseal(v.value()).and_then(|(readings, _, payload)| self.sendable(payload, readings)) {
                Some((buffer, readings, payload)) => out.push(StoredBatch { seq, buffer, readings, payload }),
                None => damaged.push(seq),
            }
            if out.len() >= max {
                break;
            }
        }
        Ok((out, damaged))
    }

    /// A stored payload as it goes on the wire, with the identity it carries. A batch sealed
    /// before the upgrade to wire version 3 names no buffer: it is re-encoded as this buffer's
    /// (the collector may store it twice, which InfluxDB's overwrite makes harmless). `None`:
    /// the payload does not decode, though its checksum held.
    fn sendable(&self, payload: &[u8], readings: u32) -> Option<(u64, u32, Vec<u8>)> {
        if let Some(buffer) = Batch::peek_buffer(payload) {
            return Some((buffer, readings, payload.to_vec()));
        }
        let mut batch = Batch::decode(payload).ok()?;
        batch.buffer = Some(self.inner.id);
        Some((self.inner.id, readings, batch.encode().ok()?))
    }

    /// [`Buffer::next_after`] outside the runtime, leaving damaged entries where they are.
    pub fn next_after_blocking(
        &self,
        lane: Lane,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredBatch>, BufferError> {
        Ok(self.read_between(lane, after, u64::MAX, max)?.0)
    }

    /// [`Buffer::next_between`] with no upper bound.
    pub async fn next_after(
        &self,
        lane: Lane,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredBatch>, BufferError> {
        self.next_between(lane, after, u64::MAX, max).await
    }

    fn quarantine(&self, lane: Lane, seqs: &[u64]) -> Result<(), BufferError> {
        let mut guard = self.inner.totals.lock().map_err(|_| BufferError::Task { doing: "quarantining" })?;
        let mut t = *guard;
        let tx = self.begin(Durability::Immediate, "quarantining")?;
        let mut moved = 0u64;
        {
            let mut table = tx.open_table(lane.table()).map_err(io("quarantining"))?;
            let mut quarantine = tx.open_table(QUARANTINE).map_err(io("quarantining"))?;
            for seq in seqs {
                if let Some(v) = table.remove(seq).map_err(io("quarantining"))? {
                    let v = v.value();
                    quarantine.insert(seq, v).map_err(io("quarantining"))?;
                    t.release(0, v.len());
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            t.quarantined_batches += moved;
            tracing::error!(agent = %self.inner.settings.agent, ?lane, batches = moved, first = seqs.first(), "unreadable batches in the buffer (bad checksum); quarantined");
            let event = quarantine_event(moved, format!("{moved} {lane:?} batches failed their checksum: {seqs:?}"));
            self.put_events(&tx, &mut t, vec![event])?;
        }
        t.store(&tx).map_err(io("quarantining"))?;
        tx.commit().map_err(io("quarantining"))?;
        *guard = t;
        Ok(())
    }

    fn report_quarantine(&self, batches: u64, message: String) -> Result<(), BufferError> {
        let mut guard = self.inner.totals.lock().map_err(|_| BufferError::Task { doing: "quarantining" })?;
        let mut t = *guard;
        let tx = self.begin(Durability::Immediate, "quarantining")?;
        t.quarantined_batches += batches;
        self.put_events(&tx, &mut t, vec![quarantine_event(batches, message)])?;
        t.store(&tx).map_err(io("quarantining"))?;
        tx.commit().map_err(io("quarantining"))?;
        *guard = t;
        Ok(())
    }

    /// Whether batch `seq` is still held (it may have been dropped for room while in flight).
    pub fn contains(&self, seq: u64) -> bool {
        let Ok(tx) = self.inner.db.begin_read() else { return true };
        [Lane::Telemetry, Lane::Events]
            .iter()
            .any(|lane| tx.open_table(lane.table()).ok().and_then(|t| t.get(seq).ok().flatten()).is_some())
    }

    /// Drops acknowledged batches from whichever lane holds them; returns how many readings
    /// each held (`None`: already gone, e.g. a duplicate ack). Not fsynced: a crash may bring
    /// them back, to be sent and deduplicated again.
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<Vec<Option<u32>>, BufferError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remove_blocking(&seqs))
            .await
            .map_err(|_| BufferError::Task { doing: "removing" })?
    }

    pub fn remove_blocking(&self, seqs: &[u64]) -> Result<Vec<Option<u32>>, BufferError> {
        let mut guard = self.inner.totals.lock().map_err(|_| BufferError::Task { doing: "removing" })?;
        let mut t = *guard;
        let tx = self.begin(Durability::None, "removing acknowledged batches")?;
        let mut out = Vec::with_capacity(seqs.len());
        {
            let mut events = tx.open_table(EVENTS).map_err(io("removing"))?;
            let mut telemetry = tx.open_table(TELEMETRY).map_err(io("removing"))?;
            for seq in seqs {
                let mut found = None;
                for table in [&mut events, &mut telemetry] {
                    if let Some(v) = table.remove(seq).map_err(io("removing"))? {
                        let v = v.value();
                        let n = claimed_readings(v);
                        t.release(n, v.len());
                        found = Some(n);
                        break;
                    }
                }
                out.push(found);
            }
        }
        t.store(&tx).map_err(io("removing"))?;
        tx.commit().map_err(io("removing"))?;
        *guard = t;
        Ok(out)
    }

    /// The timestamp (ns) of the oldest reading or event not yet acknowledged, in either lane.
    pub fn oldest_unsent_ns(&self) -> Option<i64> {
        let tx = self.inner.db.begin_read().ok()?;
        [Lane::Events, Lane::Telemetry]
            .iter()
            .filter_map(|lane| {
                let table = tx.open_table(lane.table()).ok()?;
                let (_, v) = table.first().ok()??;
                unseal(v.value()).map(|(_, ts, _)| ts)
            })
            .min()
    }

    /// Makes every commit so far durable (acks included), e.g. at shutdown.
    pub async fn flush(&self) -> Result<(), BufferError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = this.inner.totals.lock().map_err(|_| BufferError::Task { doing: "flushing" })?;
            this.begin(Durability::Immediate, "flushing")?.commit().map_err(io("flushing"))
        })
        .await
        .map_err(|_| BufferError::Task { doing: "flushing" })?
    }
}

thread_local! {
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a read of a possibly damaged file) so that a panic inside redb comes back as an
/// error. Everywhere else a panic is a bug, and the agent's binary aborts on it (see
/// [`panic_is_contained`]).
fn contain_panic<R>(f: AssertUnwindSafe<impl FnOnce() -> R>) -> std::thread::Result<R> {
    CONTAINING.with(|c| c.set(true));
    let r = std::panic::catch_unwind(f);
    CONTAINING.with(|c| c.set(false));
    r
}

/// Whether the panic being reported on this thread happens inside [`contain_panic`]; the agent's
/// panic hook lets only those unwind.
pub fn panic_is_contained() -> bool {
    CONTAINING.with(std::cell::Cell::get)
}

fn payload_readings(chunk: &[Reading]) -> u32 {
    u32::try_from(chunk.len()).unwrap_or(u32::MAX)
}

fn quarantine_event(batches: u64, message: String) -> Event {
    Event {
        ts_ns: now_ns(),
        kind: EventKind::Quarantined { batches },
        severity: Severity::Warning,
        subject: "buffer".into(),
        message,
        values: vec![],
    }
}

enum OpenFailure {
    /// The file is not what redb wrote (checksums, header, or redb panicked reading it).
    Damaged(String),
    /// Anything else (already open, permissions): not for the agent to fix by itself.
    Other(String),
}

fn open_db(path: &Path, settings: &BufferSettings) -> Result<Database, OpenFailure> {
    let opened = contain_panic(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(settings.cache_bytes)
            .set_check_integrity_on_open(settings.verify_on_open)
            .create(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(match &e {
            DatabaseError::Storage(StorageError::Corrupted(_))
            | DatabaseError::RepairAborted
            | DatabaseError::UpgradeRequired(_) => OpenFailure::Damaged(e.to_string()),
            DatabaseError::Storage(StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
                OpenFailure::Damaged(e.to_string())
            }
            _ => OpenFailure::Other(e.to_string()),
        }),
        Err(_) => Err(OpenFailure::Damaged("redb panicked reading it".into())),
    }
}

/// The identity stored in `db`, or a new random one stored durably (a new or salvaged file).
/// Never 0: that is what batches made by hand carry.
fn identity(db: &Database, path: &Path) -> Result<u64, BufferError> {
    let mut tx = db.begin_write().map_err(io("reading the buffer identity"))?;
    let stored = tx
        .open_table(META)
        .and_then(|meta| meta.get(BUFFER_ID).map(|v| v.map(|v| v.value())).map_err(Into::into))
        .map_err(io("reading the buffer identity"))?;
    if let Some(id) = stored.filter(|&id| id != 0) {
        tx.abort().map_err(io("reading the buffer identity"))?;
        return Ok(id);
    }
    let random = |e: getrandom::Error| BufferError::Random { path: path.into(), reason: e.to_string() };
    let mut id = getrandom::u64().map_err(random)?;
    while id == 0 {
        id = getrandom::u64().map_err(random)?;
    }
    tx.set_durability(Durability::Immediate).map_err(io("storing the buffer identity"))?;
    tx.open_table(META)
        .and_then(|mut meta| meta.insert(BUFFER_ID, id).map(drop).map_err(Into::into))
        .map_err(io("storing the buffer identity"))?;
    tx.commit().map_err(io("storing the buffer identity"))?;
    tracing::info!(path = %path.display(), buffer = format_args!("{id:016x}"), "new buffer identity");
    Ok(id)
}

/// Moves the damaged file aside (keeping only the latest damaged copy), creates a new one and
/// copies into it every batch that still reads back with a good checksum.
fn salvage(
    dir: &Path,
    path: &Path,
    settings: &BufferSettings,
    reason: String,
) -> Result<(Database, Recovery), BufferError> {
    let open_err = |reason: String| BufferError::Open { path: path.into(), reason };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{FILE}.damaged-")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let secs = now_ns().max(0) / 1_000_000_000;
    let moved_to = dir.join(format!("{FILE}.damaged-{secs}"));
    std::fs::rename(path, &moved_to).map_err(|e| open_err(format!("cannot move the damaged file aside: {e}")))?;
    let db = match open_db(path, settings) {
        Ok(db) => db,
        Err(OpenFailure::Damaged(r) | OpenFailure::Other(r)) => return Err(open_err(r)),
    };
    let mut salvaged = 0u64;
    let copied = contain_panic(AssertUnwindSafe(|| copy_intact(&moved_to, &db, &mut salvaged)));
    let note = match copied {
        Ok(Ok(())) => String::new(),
        Ok(Err(e)) => format!("; salvage stopped: {e}"),
        Err(_) => "; salvage stopped: redb panicked reading the damaged file".into(),
    };
    Ok((db, Recovery::Salvaged { moved_to, salvaged, reason: format!("{reason}{note}") }))
}

fn copy_intact(from: &Path, to: &Database, salvaged: &mut u64) -> Result<(), String> {
    let old = Database::builder().open_read_only(from).map_err(text)?;
    let mut t = Totals::default();
    if let Ok(rtx) = old.begin_read()
        && let Ok(meta) = rtx.open_table(META)
    {
        for (key, field) in TOTAL_KEYS.iter().zip(t.fields()) {
            *field = meta.get(key).ok().flatten().map_or(0, |v| v.value());
        }
    }
    // Lifetime counts carry over; what is held is counted again from what is copied.
    (t.held_batches, t.held_readings, t.held_bytes) = (0, 0, 0);
    for table in [EVENTS, TELEMETRY] {
        let mut from_key = 0u64;
        // A damaged page makes redb fail (or panic) part-way through a scan. The keys are
        // sequence numbers, so the scan restarts after the last good key, then further and
        // further ahead until it is past the damaged pages.
        let mut step = 1u64;
        while from_key <= t.next_seq.max(from_key) {
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
            let scanned = contain_panic(AssertUnwindSafe(|| -> Result<bool, String> {
                let rtx = old.begin_read().map_err(text)?;
                let src = rtx.open_table(table).map_err(text)?;
                for entry in src.range(from_key..).map_err(text)? {
                    let (k, v) = entry.map_err(text)?;
                    batch.push((k.value(), v.value().to_vec()));
                    if batch.len() >= 1024 {
                        return Ok(false);
                    }
                }
                Ok(true)
            }));
            let progressed = !batch.is_empty();
            if let Some((last, _)) = batch.last() {
                from_key = last + 1;
                step = 1;
            }
            let wtx = to.begin_write().map_err(text)?;
            {
                let mut dst = wtx.open_table(table).map_err(text)?;
                for (seq, v) in &batch {
                    t.next_seq = t.next_seq.max(seq + 1);
                    if let Some((n, _, _)) = unseal(v) {
                        dst.insert(seq, v.as_slice()).map_err(text)?;
                        t.hold(n, v.len());
                        *salvaged += 1;
                    }
                }
            }
            t.store(&wtx)?;
            wtx.commit().map_err(text)?;
            match scanned {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                // Damage: skip ahead, further each time nothing new could be read.
                Ok(Err(_)) | Err(_) => {
                    if !progressed {
                        from_key = from_key.saturating_add(step);
                        step = step.saturating_mul(2);
                    }
                    if step > 1 << 40 {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64, when_full: WhenFull) -> BufferSettings {
        BufferSettings {
            agent: "gw".into(),
            tags: vec![],
            max_bytes,
            when_full,
            cache_bytes: 4 << 20,
            verify_on_open: true,
            drop_report_interval: std::time::Duration::ZERO,
        }
    }

    fn readings(n: usize, from: i64) -> Vec<Reading> {
        // Values that do not compress to nothing, so batches have a realistic size.
        (0..n)
            .map(|i| Reading {
                sensor: format!("s{}", i % 3),
                ts_ns: from + i as i64,
                value: ((i as u64 * 2_654_435_761) % 100_000) as f64 * 0.001,
            })
            .collect()
    }

    fn event() -> Event {
        Event {
            ts_ns: 1,
            kind: EventKind::Trip,
            severity: Severity::Trip,
            subject: "hot".into(),
            message: "t > 90".into(),
            values: vec![],
        }
    }

    #[tokio::test]
    async fn events_go_to_their_own_lane_and_share_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, recovery) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        assert_eq!(recovery, Recovery::Clean);
        buf.append(readings(20, 0), vec![], 10).await.unwrap();
        let appended = buf.append(readings(5, 100), vec![event()], 10).await.unwrap();
        assert_eq!((appended.last_seq, appended.readings, appended.events), (3, 5, 1));
        let lane = buf.next_after(Lane::Events, None, 10).await.unwrap();
        assert_eq!(lane.iter().map(|b| (b.seq, b.readings)).collect::<Vec<_>>(), [(3, 0)]);
        assert_eq!(Batch::decode(&lane[0].payload).unwrap().events, vec![event()]);
        assert_eq!(buf.next_after(Lane::Telemetry, None, 10).await.unwrap().len(), 3);
        assert_eq!(buf.next_between(Lane::Telemetry, None, 2, 10).await.unwrap().len(), 2);
        assert_eq!(buf.remove(vec![3, 3]).await.unwrap(), [Some(0), None], "an ack removes from whichever lane");
        let t = buf.totals();
        assert_eq!((t.held_batches, t.held_readings, t.accepted_readings, t.accepted_events), (3, 25, 25, 1));
        assert_eq!(buf.oldest_unsent_ns(), Some(0));
    }

    #[tokio::test]
    async fn every_batch_carries_the_buffer_identity_which_a_new_file_never_shares() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        let id = buf.id();
        assert_ne!(id, 0);
        buf.append(readings(10, 0), vec![event()], 10).await.unwrap();
        for lane in [Lane::Telemetry, Lane::Events] {
            let stored = buf.next_after(lane, None, 10).await.unwrap();
            assert_eq!(stored[0].buffer, id);
            assert_eq!(Batch::decode(&stored[0].payload).unwrap().buffer, Some(id));
        }
        drop(buf);
        let (again, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        assert_eq!(again.id(), id, "the identity survives a restart");
        drop(again);
        // A replaced data directory (new SD card): a new identity, sequence numbers from 0.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let (fresh, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        assert_ne!(fresh.id(), id);
        assert_eq!(fresh.totals().next_seq, 0);
    }

    #[tokio::test]
    async fn a_batch_sealed_before_wire_version_3_is_sent_as_this_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        // What a version 2 agent stored: the same value layout, a batch without identity.
        #[derive(serde::Serialize)]
        struct V2<'a> {
            agent: &'a str,
            seq: u64,
            tags: Vec<(&'a str, &'a str)>,
            series: Vec<(&'a str, &'a [u8])>,
            events: Vec<Event>,
        }
        let mut column = Vec::new();
        edgeloop_shared::codec::encode_series(&[edgeloop_shared::codec::Point { ts_ns: 5, value: 1.5 }], &mut column);
        let v2 = V2 { agent: "gw", seq: 0, tags: vec![], series: vec![("temp", &column)], events: vec![] };
        let payload = postcard::to_extend(&v2, vec![edgeloop_shared::model::OLDEST_WIRE_VERSION]).unwrap();
        {
            let tx = buf.begin(Durability::Immediate, "test").unwrap();
            tx.open_table(TELEMETRY).unwrap().insert(0, seal(1, 5, &payload).as_slice()).unwrap();
            tx.commit().unwrap();
        }
        let stored = buf.next_after(Lane::Telemetry, None, 10).await.unwrap();
        assert_eq!((stored[0].seq, stored[0].buffer, stored[0].readings), (0, buf.id(), 1));
        let batch = Batch::decode(&stored[0].payload).unwrap();
        assert_eq!((batch.buffer, batch.point_count()), (Some(buf.id()), 1));
    }

    #[tokio::test]
    async fn batches_and_totals_survive_reopen_and_sequence_numbers_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        assert_eq!(buf.append(readings(25, 0), vec![], 10).await.unwrap().last_seq, 2);
        let stored = buf.next_after(Lane::Telemetry, None, 10).await.unwrap();
        assert_eq!(stored.iter().map(|b| (b.seq, b.readings)).collect::<Vec<_>>(), [(0, 10), (1, 10), (2, 5)]);
        let batch = Batch::decode(&stored[2].payload).unwrap();
        assert_eq!((batch.agent.as_str(), batch.seq, batch.point_count()), ("gw", 2, 5));
        assert_eq!(buf.next_after(Lane::Telemetry, Some(0), 10).await.unwrap().len(), 2);
        assert!(buf.next_after(Lane::Events, None, 10).await.unwrap().is_empty());
        assert_eq!(buf.remove(vec![0, 1, 2]).await.unwrap(), [Some(10), Some(10), Some(5)]);
        buf.set_latch("overtemp", Some(5)).unwrap();
        buf.flush().await.unwrap();
        drop(buf);

        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        let t = buf.totals();
        assert_eq!((t.held_batches, t.accepted_readings, t.next_seq), (0, 25, 3));
        assert_eq!(buf.latches().unwrap(), ["overtemp"]);
        assert_eq!(buf.append(readings(1, 50), vec![], 10).await.unwrap().last_seq, 3, "seq continues");
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_telemetry_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        buf.append(readings(300, 0), vec![], 300).await.unwrap();
        let one = buf.totals().held_bytes;
        drop(buf);
        // Room for three and a half batches.
        let max = one * 7 / 2;
        let (buf, _) = Buffer::open(dir.path(), settings(max, WhenFull::DropOldest)).unwrap();
        for i in 1..6 {
            buf.append(readings(300, i * 1000), vec![], 300).await.unwrap();
        }
        buf.append(vec![], vec![event()], 10).await.unwrap();
        let t = buf.totals();
        assert!(t.dropped_readings >= 600, "{t:?}");
        let events_bytes: u64 = 4 * 200;
        assert!(t.held_bytes <= max + events_bytes, "events may exceed the limit, telemetry not: {t:?}");
        let telemetry = buf.next_after(Lane::Telemetry, None, 100).await.unwrap();
        let first = Batch::decode(&telemetry[0].payload).unwrap();
        assert!(first.series[0].points[0].ts_ns >= 2000, "the oldest went first");
        let last = Batch::decode(&telemetry[telemetry.len() - 1].payload).unwrap();
        assert_eq!(last.series[0].points[0].ts_ns, 5000, "the newest is kept");
        let events = buf.next_after(Lane::Events, None, 100).await.unwrap();
        let kinds: Vec<EventKind> =
            events.iter().flat_map(|b| Batch::decode(&b.payload).unwrap().events).map(|e| e.kind).collect();
        let reported: u64 =
            kinds.iter().map(|k| if let EventKind::Dropped { readings } = k { *readings } else { 0 }).sum();
        assert_eq!(reported, t.dropped_readings, "every drop is reported: {kinds:?}");
        assert!(kinds.contains(&EventKind::Trip), "events are never dropped");
    }

    #[tokio::test]
    async fn reject_new_keeps_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1000, WhenFull::RejectNew)).unwrap();
        buf.append(readings(10, 0), vec![], 10).await.unwrap();
        let a = buf.append(readings(300, 100), vec![], 10).await.unwrap();
        assert!(a.refused_readings > 0 && a.dropped_readings == 0, "{a:?}");
        let telemetry = buf.next_after(Lane::Telemetry, None, 100).await.unwrap();
        assert_eq!(telemetry[0].seq, 0, "the oldest stays");
        assert_eq!(buf.totals().accepted_readings, 10 + a.readings);
    }

    #[tokio::test]
    async fn a_damaged_entry_is_quarantined_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        buf.append(readings(30, 0), vec![], 10).await.unwrap();
        // Damage batch 1 in place, as a bad sector would.
        {
            let tx = buf.inner.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(TELEMETRY).unwrap();
                let mut v = t.get(1).unwrap().unwrap().value().to_vec();
                let last = v.len() - 1;
                v[last] ^= 0xff;
                t.insert(1, v.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let got = buf.next_after(Lane::Telemetry, None, 10).await.unwrap();
        assert_eq!(got.iter().map(|b| b.seq).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(buf.totals().quarantined_batches, 1);
        let events = buf.next_after(Lane::Events, None, 10).await.unwrap();
        let e = &Batch::decode(&events[0].payload).unwrap().events[0];
        assert_eq!(e.kind, EventKind::Quarantined { batches: 1 });
        assert!(e.message.contains("[1]"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_damaged_file_is_moved_aside_and_what_reads_back_is_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        buf.append(readings(30, 0), vec![], 10).await.unwrap();
        drop(buf);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..64].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(&path, bytes).unwrap();
        let (buf, recovery) = Buffer::open(dir.path(), settings(1 << 30, WhenFull::DropOldest)).unwrap();
        let Recovery::Salvaged { moved_to, .. } = recovery else { panic!("{recovery:?}") };
        assert!(moved_to.exists());
        assert!(buf.totals().quarantined_batches >= 1);
        let events = buf.next_after(Lane::Events, None, 10).await.unwrap();
        let e = &Batch::decode(&events[0].payload).unwrap().events[0];
        assert!(matches!(e.kind, EventKind::Quarantined { .. }), "{e:?}");
        buf.append(readings(1, 99), vec![], 10).await.unwrap();
    }
}
