//! The sensor node's firmware core: what runs on the microcontroller next to the machine.
//!
//! `no_std`, no heap. It speaks the shared serial frame (COBS + postcard + CRC-32, from
//! `edgeloop-shared`, the very code the agent decodes with) and keeps the machine's trip latch.
//! Hardware access stays outside this crate's core logic so it runs, unchanged, in host tests.
//!
//! # Layout
//! - [`Node`]: sequence numbering of outgoing frames, the trip latch, and the handling of the
//!   gateway's commands.
#![cfg_attr(not(test), no_std)]

use edgeloop_shared::frame::{
    self, FrameDecoder, FrameError, GatewayMessage, MAX_WIRE_FRAME, NodeMessage,
};

/// What the node should do after a command from the gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reaction {
    /// Nothing to change on the hardware.
    None,
    /// De-energise the machine's enable relay (the fail-safe state) and latch.
    OpenRelay,
    /// The latch was released: the relay may be energised again.
    CloseRelay,
    /// Answer with this heartbeat frame.
    Reply(NodeMessage),
}

/// The node's protocol state.
pub struct Node {
    seq: u32,
    tripped: bool,
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
        Self {
            seq: 0,
            tripped: false,
            commands: FrameDecoder::new(),
            bad_commands: 0,
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Encodes one reading of `channel` into `out` (at least [`MAX_WIRE_FRAME`] bytes); returns
    /// the frame's length.
    pub fn reading(
        &mut self,
        channel: u16,
        value: f32,
        ts_us: Option<u64>,
        out: &mut [u8],
    ) -> Result<usize, FrameError> {
        let seq = self.next_seq();
        frame::encode(
            &NodeMessage::Reading {
                channel,
                seq,
                ts_us,
                value,
            },
            out,
        )
    }

    /// Encodes a heartbeat into `out`.
    pub fn heartbeat(&mut self, uptime_ms: u64, out: &mut [u8]) -> Result<usize, FrameError> {
        let msg = self.heartbeat_message(uptime_ms);
        frame::encode(&msg, out)
    }

    fn heartbeat_message(&mut self, uptime_ms: u64) -> NodeMessage {
        NodeMessage::Heartbeat {
            seq: self.next_seq(),
            uptime_ms,
            tripped: self.tripped,
        }
    }

    /// Feeds one byte received from the gateway; returns what to do when it completed a command.
    pub fn on_byte(&mut self, byte: u8, uptime_ms: u64) -> Reaction {
        match self.commands.push::<GatewayMessage>(byte) {
            None => Reaction::None,
            Some(Err(_)) => {
                self.bad_commands = self.bad_commands.wrapping_add(1);
                Reaction::None
            }
            Some(Ok(GatewayMessage::Trip { .. })) => {
                self.tripped = true;
                Reaction::OpenRelay
            }
            Some(Ok(GatewayMessage::Reset)) => {
                let was = core::mem::replace(&mut self.tripped, false);
                if was {
                    Reaction::CloseRelay
                } else {
                    Reaction::None
                }
            }
            Some(Ok(GatewayMessage::Ping { .. })) => {
                Reaction::Reply(self.heartbeat_message(uptime_ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(node: &mut Node, msg: &GatewayMessage) -> Reaction {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode(msg, &mut buf).unwrap();
        buf[..n]
            .iter()
            .map(|&b| node.on_byte(b, 5))
            .fold(
                Reaction::None,
                |acc, r| if r == Reaction::None { acc } else { r },
            )
    }

    #[test]
    fn readings_are_frames_the_agent_decodes() {
        let mut node = Node::new();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = node.reading(3, 21.5, None, &mut buf).unwrap();
        let mut dec = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut got = None;
        dec.feed::<NodeMessage>(&buf[..n], |r| got = Some(r));
        assert_eq!(
            got,
            Some(Ok(NodeMessage::Reading {
                channel: 3,
                seq: 1,
                ts_us: None,
                value: 21.5
            }))
        );
    }

    #[test]
    fn trip_latches_until_reset_and_noise_is_counted() {
        let mut node = Node::new();
        assert_eq!(
            feed(&mut node, &GatewayMessage::Trip { rule: 1 }),
            Reaction::OpenRelay
        );
        for b in [0x55, 0x12, 0x00] {
            node.on_byte(b, 0);
        }
        assert!(node.is_tripped());
        assert_eq!(node.bad_commands, 1);
        assert!(matches!(
            feed(&mut node, &GatewayMessage::Ping { seq: 1 }),
            Reaction::Reply(NodeMessage::Heartbeat { tripped: true, .. })
        ));
        assert_eq!(
            feed(&mut node, &GatewayMessage::Reset),
            Reaction::CloseRelay
        );
        assert_eq!(feed(&mut node, &GatewayMessage::Reset), Reaction::None);
        assert!(!node.is_tripped());
    }
}
