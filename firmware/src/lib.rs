//! The sensor node's firmware core: what runs on the microcontroller next to the machine.
//!
//! `no_std`, no heap. It speaks the shared serial frame (COBS + postcard + CRC-32, from
//! `edgeloop-shared`, the very code the agent decodes with) and keeps the machine's trip latch.
//! Hardware access goes through embedded-hal 1.0 traits only, so the same code runs, unchanged,
//! in host tests against `embedded-hal-mock` and, in the simulator, against simulated devices;
//! a board binary owns the clocks, the peripherals and the interrupts, and turns [`node_loop`].
//!
//! # Layout
//! - [`Node`]: the node's end of the serial link: sequence numbers of outgoing frames and the
//!   decoding of the gateway's commands.
//! - [`drivers`]: the ADXL345 accelerometer and the TMP117 thermometer, over I2C.
//! - [`features`]: RMS, peak, peak-to-peak and crest factor of a window of samples.
//! - [`interlock`]: the fail-safe, latching enable relay of the machine.
//! - [`sampler`]: ties readings, window features, the interlock and the link together.
//! - [`node_loop`]: one turn of the main loop (drivers, sampler, retries), shared by every board
//!   and the simulator.
//! - [`byte_queue`]: the byte ring between the main loop and a UART interrupt.
//! - `sim` (feature `sim`, and in tests): the simulated machine, ADXL345, TMP117 and relay.
//!
//! The binaries in `src/bin/`: `nucleo-f411re` (feature `board-nucleo-f411re`), the firmware for
//! an ST Nucleo-F411RE board, and `node-sim` (feature `sim`), the same core on the host, over a
//! serial port or pseudo-terminal, with simulated sensors and relay.
#![cfg_attr(not(test), no_std)]

pub mod byte_queue;
pub mod drivers;
pub mod features;
pub mod interlock;
pub mod node_loop;
pub mod sampler;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

use edgeloop_shared::frame::{self, FrameDecoder, FrameError, GatewayMessage, MAX_WIRE_FRAME, NodeMessage};

/// The node's end of the serial link.
pub struct Node {
    seq: u32,
    commands: FrameDecoder<MAX_WIRE_FRAME>,
    /// Frames from the gateway that failed to decode (noise, CRC), for diagnostics.
    pub bad_commands: u32,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub const fn new() -> Self {
        Self { seq: 0, commands: FrameDecoder::new(), bad_commands: 0 }
    }

    /// Encodes the message that `build` makes from the next sequence number into `out` (at least
    /// [`MAX_WIRE_FRAME`] bytes); returns the frame's length.
    ///
    /// A failed encoding still uses up its sequence number, so the gateway sees the gap.
    pub fn encode(&mut self, out: &mut [u8], build: impl FnOnce(u32) -> NodeMessage) -> Result<usize, FrameError> {
        self.seq = self.seq.wrapping_add(1);
        frame::encode(&build(self.seq), out)
    }

    /// Encodes one reading of `channel` into `out`.
    pub fn reading(
        &mut self,
        channel: u16,
        value: f32,
        ts_us: Option<u64>,
        out: &mut [u8],
    ) -> Result<usize, FrameError> {
        self.encode(out, |seq| NodeMessage::Reading { channel, seq, ts_us, value })
    }

    /// Encodes a heartbeat into `out`.
    pub fn heartbeat(&mut self, uptime_ms: u64, tripped: bool, out: &mut [u8]) -> Result<usize, FrameError> {
        self.encode(out, |seq| NodeMessage::Heartbeat { seq, uptime_ms, tripped })
    }

    /// Feeds one byte received from the gateway; returns the command it completed, if any.
    pub fn on_byte(&mut self, byte: u8) -> Option<GatewayMessage> {
        match self.commands.push::<GatewayMessage>(byte)? {
            Ok(command) => Some(command),
            Err(_) => {
                self.bad_commands = self.bad_commands.wrapping_add(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(node: &mut Node, msg: &GatewayMessage) -> Vec<GatewayMessage> {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode(msg, &mut buf).unwrap();
        buf[..n].iter().filter_map(|&b| node.on_byte(b)).collect()
    }

    fn decode(bytes: &[u8]) -> Vec<NodeMessage> {
        let mut dec = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut got = Vec::new();
        dec.feed::<NodeMessage>(bytes, |r| got.push(r.unwrap()));
        got
    }

    #[test]
    fn readings_are_frames_the_agent_decodes() {
        let mut node = Node::new();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = node.reading(3, 21.5, None, &mut buf).unwrap();
        assert_eq!(decode(&buf[..n]), vec![NodeMessage::Reading { channel: 3, seq: 1, ts_us: None, value: 21.5 }]);
        let n = node.heartbeat(7, true, &mut buf).unwrap();
        assert_eq!(decode(&buf[..n]), vec![NodeMessage::Heartbeat { seq: 2, uptime_ms: 7, tripped: true }]);
    }

    #[test]
    fn commands_are_decoded_and_noise_is_counted() {
        let mut node = Node::new();
        assert_eq!(feed(&mut node, &GatewayMessage::Trip { rule: 1 }), vec![GatewayMessage::Trip { rule: 1 }]);
        for b in [0x55, 0x12, 0x00] {
            assert_eq!(node.on_byte(b), None);
        }
        assert_eq!(node.bad_commands, 1);
        let limits = GatewayMessage::SetLimits { temperature_c: 80.0, vibration_rms_g: 1.5 };
        assert_eq!(feed(&mut node, &limits), vec![limits]);
        let stream = GatewayMessage::StreamRaw { enabled: true };
        assert_eq!(feed(&mut node, &stream), vec![stream]);
        assert_eq!(feed(&mut node, &GatewayMessage::Reset), vec![GatewayMessage::Reset]);
        assert_eq!(node.bad_commands, 1);
    }
}
