//! Sensor nodes on serial ports (tokio-serial), speaking the shared frame.
//!
//! One task per port. It decodes frames incrementally (resynchronising after line noise at the
//! next delimiter), counts every bad frame by kind, and writes the gateway's commands back down
//! the same port. When the port vanishes (a USB adapter unplugged: reads return 0 or fail) it is
//! reported down and reopened with backoff; the other ports carry on.

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use edgeloop_shared::{
    backoff::Backoff,
    clock::now_ns,
    frame::{self, FrameDecoder, FrameError, GatewayMessage, MAX_WIRE_FRAME, NodeMessage},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_serial::SerialPortBuilderExt;

use super::SourceContext;
use crate::{config::SerialConfig, pipeline::ObservationKind};

/// Commands queued for a port while it is down; a full queue refuses new ones.
const COMMAND_QUEUE: usize = 64;

/// Sends commands down one serial port. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SerialHandle {
    port: String,
    tx: mpsc::Sender<GatewayMessage>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("serial port {port}: command queue full ({COMMAND_QUEUE} waiting)")]
    QueueFull { port: String },
    #[error("serial port {port}: the port task has stopped")]
    Stopped { port: String },
}

impl SerialHandle {
    /// Queues a command; it is written as soon as the port is open (at once when it is).
    pub fn send(&self, msg: GatewayMessage) -> Result<(), CommandError> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::QueueFull { port: self.port.clone() },
            mpsc::error::TrySendError::Closed(_) => CommandError::Stopped { port: self.port.clone() },
        })
    }
}

/// Creates the command channel of a port: the handle for the rest of the agent, the receiver for
/// the port task.
pub fn command_channel(port: &str) -> (SerialHandle, mpsc::Receiver<GatewayMessage>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    (SerialHandle { port: port.into(), tx }, rx)
}

/// Maps channel numbers to sensor ids.
pub struct ChannelNames {
    prefix: String,
    names: BTreeMap<u16, String>,
}

impl ChannelNames {
    pub fn new(source_id: &str, cfg: &SerialConfig) -> Self {
        let prefix = cfg.prefix.clone().unwrap_or_else(|| source_id.to_owned());
        let names = cfg.channels.iter().filter_map(|(n, name)| Some((n.parse().ok()?, name.clone()))).collect();
        Self { prefix, names }
    }

    pub fn sensor(&self, channel: u16) -> String {
        match self.names.get(&channel) {
            Some(name) => format!("{}.{name}", self.prefix),
            None => format!("{}.ch{channel}", self.prefix),
        }
    }

    /// The node itself, as a sensor: heartbeats keep it alive.
    pub fn node(&self) -> String {
        format!("{}.node", self.prefix)
    }

    /// Sensors known from the config (they go stale if they never report).
    pub fn configured(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().map(|&c| self.sensor(c)).collect();
        v.push(self.node());
        v
    }
}

/// Counts a bad frame under its kind and logs it with the port's name (at most once a second
/// per port at `warn`, so a noisy line cannot flood the log).
struct BadFrames {
    last_log: Option<Instant>,
    since_log: u64,
}

impl BadFrames {
    fn record(&mut self, ctx: &SourceContext, port: &str, err: &FrameError) {
        let c = &ctx.counters;
        match err {
            FrameError::Crc { .. } => c.crc_errors.fetch_add(1, Relaxed),
            FrameError::TooShort { .. } | FrameError::Cobs => c.short_frames.fetch_add(1, Relaxed),
            FrameError::Oversized { .. } => c.oversized.fetch_add(1, Relaxed),
            FrameError::Version { .. } | FrameError::Decode(_) | FrameError::BufferTooSmall { .. } => {
                c.malformed.fetch_add(1, Relaxed)
            }
        };
        self.since_log += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            tracing::warn!(source = %ctx.id, port, error = %err, bad_frames = self.since_log, "bad frame(s) on serial port");
            self.last_log = Some(now);
            self.since_log = 0;
        }
    }
}

/// Runs one port until shutdown: open, read and write, reopen after it vanishes.
pub async fn run(ctx: SourceContext, cfg: SerialConfig, mut commands: mpsc::Receiver<GatewayMessage>) {
    let port = cfg.path.display().to_string();
    let names = ChannelNames::new(&ctx.id, &cfg);
    let mut backoff = Backoff::seeded(cfg.reopen_min.0, cfg.reopen_max.0);
    let mut bad = BadFrames { last_log: None, since_log: 0 };
    let mut failed_opens = 0u32;
    loop {
        let stream = match tokio_serial::new(&port, cfg.baud).open_native_async() {
            Ok(s) => s,
            Err(e) => {
                failed_opens += 1;
                let delay = backoff.next_delay();
                if failed_opens == 1 {
                    tracing::warn!(source = %ctx.id, port, error = %e, retry_in = ?delay, "serial port unavailable");
                } else {
                    tracing::debug!(source = %ctx.id, port, error = %e, retry_in = ?delay, "serial port still unavailable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
        };
        failed_opens = 0;
        backoff.reset();
        ctx.counters.up.store(true, Relaxed);
        ctx.counters.opens.fetch_add(1, Relaxed);
        tracing::info!(source = %ctx.id, port, baud = cfg.baud, "serial port open");
        let heartbeat = cfg.heartbeat.map(|d| d.0);
        let keep_going = serve(&ctx, &port, &names, stream, &mut commands, &mut bad, heartbeat).await;
        ctx.counters.up.store(false, Relaxed);
        if !keep_going {
            return;
        }
        tracing::warn!(source = %ctx.id, port, "serial port lost; reopening");
    }
}

/// What one node message says about which sensors.
fn observations(names: &ChannelNames, msg: NodeMessage, received_ns: i64) -> Vec<(String, ObservationKind)> {
    let value = |v: f32, device_ts_ns: Option<i64>| {
        if v.is_finite() {
            ObservationKind::Value { value: v as f64, device_ts_ns, received_ns }
        } else {
            ObservationKind::Error
        }
    };
    match msg {
        NodeMessage::Reading { channel, ts_us, value: v, .. } => {
            let device_ts_ns = ts_us.and_then(|us| i64::try_from(us).ok()).map(|us| us.saturating_mul(1_000));
            vec![(names.sensor(channel), value(v, device_ts_ns))]
        }
        // Window features computed on the node (where the link is too slow for raw samples).
        NodeMessage::Features { channel, rms, peak, peak_to_peak, crest, .. } => {
            let base = names.sensor(channel);
            [("rms", rms), ("peak", peak), ("p2p", peak_to_peak), ("crest", crest)]
                .into_iter()
                .map(|(suffix, v)| (format!("{base}.{suffix}"), value(v, None)))
                .collect()
        }
        // Heartbeats, interlock reports and raw blocks prove the node alive; the rules and the
        // raw-capture path consume the rest of their content.
        _ => vec![(names.node(), ObservationKind::Alive)],
    }
}

/// Reads and writes an open port; `false` when the agent is stopping.
async fn serve(
    ctx: &SourceContext,
    port: &str,
    names: &ChannelNames,
    mut stream: tokio_serial::SerialStream,
    commands: &mut mpsc::Receiver<GatewayMessage>,
    bad: &mut BadFrames,
    heartbeat: Option<std::time::Duration>,
) -> bool {
    let mut decoder = FrameDecoder::<MAX_WIRE_FRAME>::new();
    let mut buf = [0u8; 4096];
    let mut out = [0u8; MAX_WIRE_FRAME];
    let mut frames = Vec::new();
    let mut commands_open = true;
    // The heartbeat: a Ping every interval (never when unset: the branch below stays disabled).
    let every = heartbeat.unwrap_or(std::time::Duration::from_secs(3600));
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat_seq = 0u32;
    loop {
        tokio::select! {
            _ = beat.tick(), if heartbeat.is_some() => {
                beat_seq = beat_seq.wrapping_add(1);
                match frame::encode(&GatewayMessage::Ping { seq: beat_seq }, &mut out) {
                    Ok(len) => {
                        if let Err(e) = stream.write_all(&out[..len]).await {
                            tracing::warn!(source = %ctx.id, port, error = %e, "cannot write the heartbeat; reopening the port");
                            return true;
                        }
                    }
                    Err(e) => tracing::error!(source = %ctx.id, port, error = %e, "cannot encode the heartbeat"),
                }
            }
            read = AsyncReadExt::read(&mut stream, &mut buf) => {
                let n = match read {
                    Ok(0) => return true, // hang-up: the device is gone
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(source = %ctx.id, port, error = %e, "serial read failed");
                        return true;
                    }
                };
                let received_ns = now_ns();
                decoder.feed::<NodeMessage>(&buf[..n], |r| frames.push(r));
                for frame in frames.drain(..) {
                    let msg = match frame {
                        Ok(m) => m,
                        Err(e) => {
                            bad.record(ctx, port, &e);
                            continue;
                        }
                    };
                    ctx.counters.messages.fetch_add(1, Relaxed);
                    let observations = observations(names, msg, received_ns);
                    if observations.iter().any(|(_, k)| *k == ObservationKind::Error) {
                        ctx.counters.malformed.fetch_add(1, Relaxed);
                    }
                    for (sensor, kind) in observations {
                        if !ctx.emit(sensor, kind).await {
                            return false;
                        }
                    }
                }
            }
            cmd = commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    commands_open = false;
                    continue;
                };
                match frame::encode(&cmd, &mut out) {
                    Ok(len) => {
                        if let Err(e) = stream.write_all(&out[..len]).await {
                            tracing::warn!(source = %ctx.id, port, error = %e, ?cmd, "cannot write a command; reopening the port");
                            return true;
                        }
                        let _ = stream.flush().await;
                        tracing::info!(source = %ctx.id, port, ?cmd, "command sent to the node");
                    }
                    Err(e) => tracing::error!(source = %ctx.id, port, error = %e, ?cmd, "cannot encode a command"),
                }
            }
            _ = ctx.shutdown.cancelled() => return false,
        }
    }
}
