//! The rules' latched trips, in the buffer's database: a latch must survive a restart as surely
//! as an accepted reading, and one file means one fsync discipline and one lock for both. The
//! rules stage hands changes over a queue ([`LatchChange`]); [`writer`] persists them off the fast
//! path.

use ::redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc;

use super::redb::{Buffer, BufferError, io};
use crate::pipeline::LatchChange;

const LATCHES: TableDefinition<&str, i64> = TableDefinition::new("latches");

impl Buffer {
    /// Rules latched before a restart.
    pub fn latches(&self) -> Result<Vec<String>, BufferError> {
        let tx = self.inner.db.begin_read().map_err(io("reading latches"))?;
        let table = match tx.open_table(LATCHES) {
            Ok(t) => t,
            Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io("reading latches")(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(io("reading latches"))? {
            out.push(entry.map_err(io("reading latches"))?.0.value().to_owned());
        }
        Ok(out)
    }

    /// Persists (`Some(since_ns)`) or clears a rule's latch, durably.
    pub fn set_latch(&self, rule: &str, since_ns: Option<i64>) -> Result<(), BufferError> {
        let _guard = self.inner.totals.lock().map_err(|_| BufferError::Task { doing: "latching" })?;
        let tx = self.begin(Durability::Immediate, "persisting a latch")?;
        {
            let mut table = tx.open_table(LATCHES).map_err(io("persisting a latch"))?;
            match since_ns {
                Some(ts) => table.insert(rule, ts).map(|_| ()),
                None => table.remove(rule).map(|_| ()),
            }
            .map_err(io("persisting a latch"))?;
        }
        tx.commit().map_err(io("persisting a latch"))
    }
}

/// Starts the task that persists latch changes in order; returns its queue. Unbounded on
/// purpose: a change is a rule latching or being reset, a handful per incident, and the stage
/// must never wait to hand one over.
pub fn writer(buffer: Buffer) -> mpsc::UnboundedSender<LatchChange> {
    let (tx, mut rx) = mpsc::unbounded_channel::<LatchChange>();
    tokio::spawn(async move {
        while let Some((rule, since)) = rx.recv().await {
            let b = buffer.clone();
            let name = rule.clone();
            match tokio::task::spawn_blocking(move || b.set_latch(&name, since)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(rule, error = %e, "cannot persist the latch"),
                Err(_) => tracing::error!(rule, "the latch writer stopped"),
            }
        }
    });
    tx
}
