//! The serial frame between a sensor node and its gateway.
//!
//! On the wire: `COBS( version | postcard(message) | crc32c_le(version | postcard(message)) ) 0x00`.
//!
//! * COBS removes every zero byte from the body, so `0x00` only ever marks a frame's end and a reader
//!   that joins mid-stream, or loses bytes to line noise, is back in step at the next zero.
//! * The CRC-32 (Castagnoli) catches the corruption COBS cannot see.
//! * The version byte comes first because postcard is not self-describing: a frame of another
//!   version is refused by name instead of being mis-decoded. Within a version, message enums only
//!   ever gain variants at the end.
//!
//! [`FrameDecoder`] is incremental (feed it whatever `read()` returned), uses a fixed buffer (no
//! heap, so the firmware can run it) and never panics, whatever bytes arrive.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Version byte of the frames this build writes and reads.
pub const FRAME_VERSION: u8 = 1;

/// Largest frame body (version + message + CRC) before COBS, in bytes.
pub const MAX_FRAME_BODY: usize = 256;

/// Largest frame on the wire: the body after COBS plus the `0x00` delimiter.
pub const MAX_WIRE_FRAME: usize = cobs::max_encoding_length(MAX_FRAME_BODY) + 1;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const CRC_LEN: usize = 4;

/// What a sensor node sends to its gateway. New variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// One value of one channel. `ts_us` is the node's own clock (µs since the Unix epoch) when it
    /// has one; otherwise the gateway timestamps the reading on arrival.
    Reading { channel: u16, seq: u32, ts_us: Option<u64>, value: f32 },
    /// Sent periodically so the gateway can tell a quiet node from a dead one.
    Heartbeat { seq: u32, uptime_ms: u64, tripped: bool },
    /// Vibration features of one window of one channel, in g, the window's mean (gravity) removed.
    Features { channel: u16, seq: u32, rms: f32, peak: f32, peak_to_peak: f32, crest: f32 },
    /// Consecutive raw samples of one channel, sent only while the gateway asked for them
    /// ([`GatewayMessage::StreamRaw`]).
    RawBlock { channel: u16, seq: u32, samples: [f32; RAW_BLOCK_LEN] },
    /// The node's interlock latched and stopped the machine, for this reason (the first one only).
    Tripped { seq: u32, cause: InterlockCause },
    /// A [`GatewayMessage::Reset`] was refused because this condition is still present.
    ResetRefused { seq: u32, cause: InterlockCause },
    /// The limits in force after a [`GatewayMessage::SetLimits`]: the old ones when the request was
    /// refused.
    Limits { seq: u32, temperature_c: f32, vibration_rms_g: f32 },
}

/// What a gateway sends down to a sensor node. New variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum GatewayMessage {
    /// Open the machine's enable relay now, and latch.
    Trip { rule: u16 },
    /// Release a latched trip.
    Reset,
    /// Liveness check; the node answers with a heartbeat.
    Ping { seq: u32 },
    /// Replace the node's local trip limits; the node answers with [`NodeMessage::Limits`].
    SetLimits { temperature_c: f32, vibration_rms_g: f32 },
    /// Start or stop streaming raw samples ([`NodeMessage::RawBlock`]).
    StreamRaw { enabled: bool },
}

/// Samples in one [`NodeMessage::RawBlock`]: postcard writes an `f32` as 4 bytes, so a block
/// takes 128 of the [`MAX_FRAME_BODY`] bytes.
pub const RAW_BLOCK_LEN: usize = 32;

/// A sensor of the node, as named in an [`InterlockCause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sensor {
    Accelerometer,
    Thermometer,
}

/// Why a node's interlock stopped the machine, or why it refuses to restart it. New variants are
/// only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InterlockCause {
    /// The node (re)started: a machine never restarts by itself after a power loss.
    PowerOn,
    /// The gateway sent [`GatewayMessage::Trip`] for this rule.
    Commanded { rule: u16 },
    /// The temperature went over its limit.
    OverTemperature { celsius: f32 },
    /// The vibration RMS (largest axis) went over its limit.
    OverVibration { rms_g: f32 },
    /// The sensor's driver reported an error, or the sensor returned a non-finite value.
    SensorFault { sensor: Sensor },
    /// The sensor has not given a reading since the node started or since it failed.
    NoReading { sensor: Sensor },
    /// Nothing came from the gateway for this long.
    HeartbeatLost { silent_ms: u64 },
}

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes or more exceeds the {limit}-byte limit")]
    Oversized { len: usize, limit: usize },
    #[error("frame of {len} bytes is too short to hold a version byte and a CRC")]
    TooShort { len: usize },
    #[error("frame is not valid COBS")]
    Cobs,
    #[error("frame CRC mismatch: frame says {expected:#010x}, body hashes to {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("frame version {found} is not supported (this build speaks version {FRAME_VERSION})")]
    Version { found: u8 },
    #[error("frame body does not decode: {0}")]
    Decode(postcard::Error),
    #[error("output buffer of {len} bytes is too small, {needed} needed")]
    BufferTooSmall { len: usize, needed: usize },
}

/// Encodes `msg` as one wire frame into `out`, delimiter included; returns the bytes written.
///
/// # Errors
/// [`FrameError::Oversized`] when the message does not fit [`MAX_FRAME_BODY`],
/// [`FrameError::BufferTooSmall`] when `out` cannot hold the encoded frame.
pub fn encode<T: Serialize>(msg: &T, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut body = [0u8; MAX_FRAME_BODY];
    body[0] = FRAME_VERSION;
    let msg_len = postcard::to_slice(msg, &mut body[1..MAX_FRAME_BODY - CRC_LEN])
        .map_err(|e| match e {
            postcard::Error::SerializeBufferFull => {
                FrameError::Oversized { len: MAX_FRAME_BODY, limit: MAX_FRAME_BODY }
            }
            other => FrameError::Decode(other),
        })?
        .len();
    let crc_at = 1 + msg_len;
    let crc = CRC.checksum(&body[..crc_at]);
    body[crc_at..crc_at + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let body = &body[..crc_at + CRC_LEN];

    let needed = cobs::max_encoding_length(body.len()) + 1;
    if out.len() < needed {
        return Err(FrameError::BufferTooSmall { len: out.len(), needed });
    }
    let n = cobs::try_encode(body, out).map_err(|_| FrameError::BufferTooSmall { len: out.len(), needed })?;
    out[n] = 0;
    Ok(n + 1)
}

/// Encodes `msg` as one wire frame into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_to_vec<T: Serialize>(msg: &T) -> Result<alloc::vec::Vec<u8>, FrameError> {
    let mut out = alloc::vec![0u8; MAX_WIRE_FRAME];
    let n = encode(msg, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Decodes one frame body (the bytes between two delimiters, still COBS-encoded) in place.
pub fn decode_body<T: DeserializeOwned>(frame: &mut [u8]) -> Result<T, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    let body = frame.get(..n).ok_or(FrameError::Cobs)?;
    if body.len() < 1 + CRC_LEN {
        return Err(FrameError::TooShort { len: body.len() });
    }
    let (payload, crc_bytes) = body.split_at(body.len() - CRC_LEN);
    let expected = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual = CRC.checksum(payload);
    if expected != actual {
        return Err(FrameError::Crc { expected, actual });
    }
    if payload[0] != FRAME_VERSION {
        return Err(FrameError::Version { found: payload[0] });
    }
    postcard::from_bytes(&payload[1..]).map_err(FrameError::Decode)
}

/// Reassembles frames from a byte stream. `N` is the largest encoded frame accepted (without its
/// delimiter); [`MAX_WIRE_FRAME`] fits every valid frame.
///
/// A frame longer than `N` is dropped whole: the decoder discards bytes up to the next delimiter
/// and reports [`FrameError::Oversized`] once.
pub struct FrameDecoder<const N: usize = MAX_WIRE_FRAME> {
    buf: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0, overflowed: false }
    }

    /// Bytes of an unfinished frame held right now.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Forgets a partly received frame (e.g. after the port was reopened).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Takes one byte; returns the outcome when the byte completed a frame. Empty frames (two
    /// delimiters in a row, which senders use to resynchronise a line) yield nothing.
    pub fn push<T: DeserializeOwned>(&mut self, byte: u8) -> Option<Result<T, FrameError>> {
        if byte != 0 {
            if self.len < N {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return None;
        }
        let len = core::mem::replace(&mut self.len, 0);
        if core::mem::replace(&mut self.overflowed, false) {
            return Some(Err(FrameError::Oversized { len: N + 1, limit: N }));
        }
        if len == 0 {
            return None;
        }
        Some(decode_body(&mut self.buf[..len]))
    }

    /// Feeds a chunk of bytes, calling `on_frame` for every frame the chunk completes.
    pub fn feed<T: DeserializeOwned>(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<T, FrameError>)) {
        for &b in bytes {
            if let Some(outcome) = self.push(b) {
                on_frame(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: u32) -> NodeMessage {
        NodeMessage::Reading {
            channel: (i % 7) as u16,
            seq: i,
            ts_us: Some(1_700_000_000_000_000 + i as u64),
            value: i as f32 * 0.25,
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<NodeMessage, FrameError>> {
        let mut d = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut out = Vec::new();
        d.feed(bytes, |r| out.push(r));
        out
    }

    #[test]
    fn round_trips_every_message_kind() {
        let msgs = [
            reading(1),
            NodeMessage::Reading { channel: 0, seq: 0, ts_us: None, value: 0.0 },
            NodeMessage::Heartbeat { seq: 9, uptime_ms: u64::MAX, tripped: true },
            NodeMessage::Features { channel: 2, seq: 10, rms: 0.5, peak: 1.25, peak_to_peak: 2.5, crest: 2.5 },
            NodeMessage::RawBlock { channel: 1, seq: u32::MAX, samples: [f32::MIN; RAW_BLOCK_LEN] },
            NodeMessage::Tripped { seq: 11, cause: InterlockCause::OverVibration { rms_g: 3.5 } },
            NodeMessage::Tripped { seq: 12, cause: InterlockCause::HeartbeatLost { silent_ms: u64::MAX } },
            NodeMessage::ResetRefused { seq: 13, cause: InterlockCause::SensorFault { sensor: Sensor::Thermometer } },
            NodeMessage::Limits { seq: 14, temperature_c: -40.0, vibration_rms_g: 16.0 },
        ];
        for m in msgs {
            let wire = encode_to_vec(&m).unwrap();
            assert!(wire.len() <= MAX_WIRE_FRAME, "{m:?} takes {} bytes", wire.len());
            assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 1, "only the delimiter is zero");
            assert_eq!(decode_all(&wire), vec![Ok(m)]);
        }
        let downs = [
            GatewayMessage::Trip { rule: 3 },
            GatewayMessage::SetLimits { temperature_c: 85.0, vibration_rms_g: 2.0 },
            GatewayMessage::StreamRaw { enabled: true },
        ];
        for down in downs {
            let mut wire = encode_to_vec(&down).unwrap();
            let n = wire.len() - 1;
            assert_eq!(decode_body::<GatewayMessage>(&mut wire[..n]), Ok(down));
        }
    }

    /// Postcard names an enum variant by its position: variants appended since version 1 must
    /// not move the old ones, or firmware in the field and the agent would disagree.
    #[test]
    fn appended_variants_keep_the_old_wire_bytes() {
        let heartbeat = postcard::to_allocvec(&NodeMessage::Heartbeat { seq: 1, uptime_ms: 2, tripped: true }).unwrap();
        assert_eq!(heartbeat, [1, 1, 2, 1]);
        let ping = postcard::to_allocvec(&GatewayMessage::Ping { seq: 7 }).unwrap();
        assert_eq!(ping, [2, 7]);
        let features = postcard::to_allocvec(&NodeMessage::Features {
            channel: 0,
            seq: 0,
            rms: 0.0,
            peak: 0.0,
            peak_to_peak: 0.0,
            crest: 0.0,
        })
        .unwrap();
        assert_eq!(features[0], 2);
        let stream = postcard::to_allocvec(&GatewayMessage::StreamRaw { enabled: false }).unwrap();
        assert_eq!(stream, [4, 0]);
    }

    #[test]
    fn resynchronises_after_noise_and_reports_each_bad_frame() {
        // Noise with no delimiter merges with the frame that follows: that one frame is lost.
        let mut stream = vec![0x13, 0x37, 0xff];
        stream.extend(encode_to_vec(&reading(1)).unwrap());
        stream.extend(encode_to_vec(&reading(2)).unwrap());
        let mut corrupt = encode_to_vec(&reading(3)).unwrap();
        corrupt[3] = corrupt[3].wrapping_add(1).max(1);
        stream.extend(&corrupt);
        let cut = encode_to_vec(&reading(4)).unwrap();
        stream.extend(&cut[..cut.len() / 2]);
        stream.push(0);
        stream.extend(encode_to_vec(&reading(5)).unwrap());
        let out = decode_all(&stream);
        assert_eq!(out.len(), 5, "{out:?}");
        assert!(out[0].is_err(), "noise + frame is one bad frame: {:?}", out[0]);
        assert_eq!(out[1], Ok(reading(2)));
        assert!(matches!(out[2], Err(FrameError::Crc { .. }) | Err(FrameError::Cobs)), "{:?}", out[2]);
        assert!(out[3].is_err(), "a frame cut in half is an error: {:?}", out[3]);
        assert_eq!(out[4], Ok(reading(5)));
    }

    #[test]
    fn oversized_frames_are_dropped_whole() {
        let mut d = FrameDecoder::<16>::new();
        let mut out: Vec<Result<NodeMessage, _>> = Vec::new();
        d.feed(&[1u8; 100], |r| out.push(r));
        d.feed(&[0], |r| out.push(r));
        assert_eq!(out, vec![Err(FrameError::Oversized { len: 17, limit: 16 })]);
        let m = NodeMessage::Heartbeat { seq: 1, uptime_ms: 2, tripped: false };
        d.feed(&encode_to_vec(&m).unwrap(), |r| out.push(r));
        assert_eq!(out.last(), Some(&Ok(m)));
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut body = vec![2u8];
        body.extend(postcard::to_allocvec(&reading(1)).unwrap());
        let crc = CRC.checksum(&body);
        body.extend(crc.to_le_bytes());
        let mut wire = cobs::encode_vec(&body);
        assert_eq!(decode_body::<NodeMessage>(&mut wire), Err(FrameError::Version { found: 2 }));
    }

    #[test]
    fn short_frames_and_small_buffers_are_errors() {
        assert_eq!(decode_all(&[0x02, 0x01, 0x00]), vec![Err(FrameError::TooShort { len: 1 })]);
        let mut small = [0u8; 4];
        assert!(matches!(encode(&reading(1), &mut small), Err(FrameError::BufferTooSmall { .. })));
    }

    /// Deterministic pseudo-random bytes, with and without valid frames mixed in: the decoder must
    /// never panic and must still find every valid frame that follows a delimiter.
    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2_000 {
            let mut d = FrameDecoder::<64>::new();
            let len = (next() % 300) as usize;
            let noise: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
            let mut seen = 0;
            d.feed::<NodeMessage>(&noise, |_| seen += 1);
            let good = reading(round);
            let mut found = None;
            d.feed::<NodeMessage>(&[0], |_| {});
            d.feed::<NodeMessage>(&encode_to_vec(&good).unwrap(), |r| found = Some(r));
            assert_eq!(found, Some(Ok(good)));
        }
    }

    proptest::proptest! {
        /// Any bytes, fed in any chunking: the decoder never panics, and a valid frame that
        /// follows a delimiter always comes out intact.
        #[test]
        fn decoder_survives_any_input_and_resynchronises(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            chunk in 1usize..64,
            channel in proptest::num::u16::ANY,
            seq in proptest::num::u32::ANY,
            value in -1e6f32..1e6,
            ts_us in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let mut d = FrameDecoder::<64>::new();
            for piece in noise.chunks(chunk) {
                d.feed::<NodeMessage>(piece, |_| {});
            }
            let good = NodeMessage::Reading { channel, seq, ts_us, value };
            let mut stream = vec![0u8];
            stream.extend(encode_to_vec(&good).unwrap());
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                d.feed::<NodeMessage>(piece, |r| out.push(r));
            }
            proptest::prop_assert_eq!(out.last().cloned(), Some(Ok(good)));
        }
    }
}
