//! The node's application without its hardware: readings in, interlock decisions and frames out.
//!
//! The board's main loop reads the drivers and hands the results over, errors included:
//!
//! ```text
//! loop {
//!     let now = clock.millis();
//!     let n = adxl.read_fifo_g(&mut buf);
//!     report(sampler.on_acceleration(n.map(|n| &buf[..n]), &mut send));
//!     if temperature_due(now) { report(sampler.on_temperature(tmp.read_celsius(), &mut send)); }
//!     while let Some(byte) = uart.try_read() { report(sampler.on_byte(now, byte, &mut send)); }
//!     report(sampler.poll(now, &mut send));
//! }
//! ```
//!
//! The loop must come round before the accelerometer's FIFO overflows (10 ms at 3200 Hz).
//!
//! Acceleration fills a window of `N` samples per axis; each full window gives one
//! [`NodeMessage::Features`] per axis and feeds the interlock the largest axis RMS, mean removed.
//! While the gateway asks for it, the samples also go out as [`NodeMessage::RawBlock`]s: about
//! 43 kB/s for three axes at 3200 Hz, so streaming needs the UART at 460800 baud or more. A failed
//! read discards the partial window (a gap would distort its features) and counts as a sensor
//! fault. Every frame goes to `emit`, a whole frame per call, delimiter included.
//!
//! The methods return the interlock's pin error after doing all their other work, so a pin fault
//! never silences the node; the interlock retries the pin on every later call.

use edgeloop_shared::frame::{GatewayMessage, MAX_WIRE_FRAME, NodeMessage, RAW_BLOCK_LEN};
use embedded_hal::digital::OutputPin;

use crate::Node;
use crate::drivers::adxl345::Acceleration;
use crate::features::Features;
use crate::interlock::{self, Interlock, InterlockCause, Limits, ResetOutcome, Sensor};

/// The channel numbers the node reports on; the agent maps them to sensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    /// X, Y and Z of the accelerometer.
    pub acceleration: [u16; 3],
    pub temperature: u16,
}

impl Default for Channels {
    fn default() -> Self {
        Self { acceleration: [0, 1, 2], temperature: 3 }
    }
}

/// How the sampler reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub channels: Channels,
    /// Time between two unsolicited heartbeats.
    pub heartbeat_period_ms: u64,
}

/// What the sampler's methods return: the interlock's pin error, if driving the relay failed.
pub type PinResult<P> = Result<(), interlock::Error<<P as embedded_hal::digital::ErrorType>::Error>>;

/// The sampler; `N` is the window length in samples per axis.
pub struct Sampler<P, const N: usize> {
    node: Node,
    interlock: Interlock<P>,
    config: Config,
    window: [[f32; N]; 3],
    filled: usize,
    streaming: bool,
    raw: [[f32; RAW_BLOCK_LEN]; 3],
    raw_filled: usize,
    next_heartbeat_ms: u64,
    out: [u8; MAX_WIRE_FRAME],
    /// Frames that could not be encoded, for diagnostics (every message fits a frame, so this
    /// stays 0 unless the frame limits change).
    pub encode_failures: u32,
}

impl<P: OutputPin, const N: usize> Sampler<P, N> {
    const WINDOW_NOT_EMPTY: () = assert!(N > 0, "a window holds at least one sample");

    /// Starts with an empty window, streaming off, and a heartbeat due at the first
    /// [`Sampler::poll`].
    pub fn new(interlock: Interlock<P>, config: Config) -> Self {
        let () = Self::WINDOW_NOT_EMPTY;
        Self {
            node: Node::new(),
            interlock,
            config,
            window: [[0.0; N]; 3],
            filled: 0,
            streaming: false,
            raw: [[0.0; RAW_BLOCK_LEN]; 3],
            raw_filled: 0,
            next_heartbeat_ms: 0,
            out: [0; MAX_WIRE_FRAME],
            encode_failures: 0,
        }
    }

    pub fn interlock(&self) -> &Interlock<P> {
        &self.interlock
    }

    /// The link, for its diagnostics counters.
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Gives the relay pin back.
    pub fn release(self) -> P {
        self.interlock.release()
    }

    /// The accelerometer's samples since the last call (its FIFO), or its driver's error.
    pub fn on_acceleration<E>(
        &mut self,
        samples: Result<&[Acceleration], E>,
        emit: &mut impl FnMut(&[u8]),
    ) -> PinResult<P> {
        let samples = match samples {
            Ok(samples) => samples,
            Err(_) => {
                self.filled = 0;
                self.raw_filled = 0;
                let result = self.interlock.sensor_fault(Sensor::Accelerometer);
                self.report_trip(emit);
                return result;
            }
        };
        let mut result = Ok(());
        for sample in samples {
            let axes = [sample.x, sample.y, sample.z];
            for (window, value) in self.window.iter_mut().zip(axes) {
                if let Some(slot) = window.get_mut(self.filled) {
                    *slot = value;
                }
            }
            self.filled += 1;
            if self.streaming {
                for (block, value) in self.raw.iter_mut().zip(axes) {
                    if let Some(slot) = block.get_mut(self.raw_filled) {
                        *slot = value;
                    }
                }
                self.raw_filled += 1;
                if self.raw_filled >= RAW_BLOCK_LEN {
                    self.send_raw_blocks(emit);
                }
            }
            if self.filled >= N {
                keep_first(&mut result, self.finish_window(emit));
            }
        }
        result
    }

    /// A thermometer reading, or its driver's error. A reading goes out as a
    /// [`NodeMessage::Reading`] of the temperature channel.
    pub fn on_temperature<E>(&mut self, celsius: Result<f32, E>, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        let result = match celsius {
            Ok(value) => {
                let channel = self.config.channels.temperature;
                self.send(emit, |seq| NodeMessage::Reading { channel, seq, ts_us: None, value });
                self.interlock.temperature(value)
            }
            Err(_) => self.interlock.sensor_fault(Sensor::Thermometer),
        };
        self.report_trip(emit);
        result
    }

    /// One byte from the gateway, received at `now_ms`; acts on the command it completes.
    pub fn on_byte(&mut self, now_ms: u64, byte: u8, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        let Some(command) = self.node.on_byte(byte) else {
            return Ok(());
        };
        self.interlock.gateway_seen(now_ms);
        let result = match command {
            GatewayMessage::Trip { rule } => self.interlock.trip(InterlockCause::Commanded { rule }),
            GatewayMessage::Reset => match self.interlock.reset(now_ms) {
                Ok(ResetOutcome::Refused(cause)) => {
                    self.send(emit, |seq| NodeMessage::ResetRefused { seq, cause });
                    Ok(())
                }
                outcome => {
                    self.send_heartbeat(now_ms, emit);
                    outcome.map(|_| ())
                }
            },
            GatewayMessage::Ping { .. } => {
                self.send_heartbeat(now_ms, emit);
                Ok(())
            }
            GatewayMessage::SetLimits { temperature_c, vibration_rms_g } => {
                // A refused request leaves the old limits; the answer shows the gateway which.
                if let Ok(limits) = Limits::new(temperature_c, vibration_rms_g) {
                    self.interlock.set_limits(limits);
                }
                let limits = self.interlock.limits();
                self.send(emit, |seq| NodeMessage::Limits {
                    seq,
                    temperature_c: limits.temperature_c(),
                    vibration_rms_g: limits.vibration_rms_g(),
                });
                Ok(())
            }
            GatewayMessage::StreamRaw { enabled } => {
                self.streaming = enabled;
                self.raw_filled = 0;
                Ok(())
            }
        };
        self.report_trip(emit);
        result
    }

    /// Checks the gateway's heartbeat and sends the node's own when it is due; call it every loop.
    pub fn poll(&mut self, now_ms: u64, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        let result = self.interlock.poll(now_ms);
        self.report_trip(emit);
        if now_ms >= self.next_heartbeat_ms {
            self.send_heartbeat(now_ms, emit);
        }
        result
    }

    fn finish_window(&mut self, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        self.filled = 0;
        let mut worst_rms = 0.0f32;
        for axis in 0..3 {
            let f = Features::of_ac(&self.window[axis]);
            let channel = self.config.channels.acceleration[axis];
            self.send(emit, |seq| NodeMessage::Features {
                channel,
                seq,
                rms: f.rms,
                peak: f.peak,
                peak_to_peak: f.peak_to_peak,
                crest: f.crest,
            });
            // Not `f32::max` alone: it drops a NaN, which must reach the interlock as a fault.
            worst_rms = if f.rms.is_nan() || worst_rms.is_nan() { f32::NAN } else { worst_rms.max(f.rms) };
        }
        let result = self.interlock.vibration(worst_rms);
        self.report_trip(emit);
        result
    }

    fn send_raw_blocks(&mut self, emit: &mut impl FnMut(&[u8])) {
        self.raw_filled = 0;
        for axis in 0..3 {
            let channel = self.config.channels.acceleration[axis];
            let samples = self.raw[axis];
            self.send(emit, |seq| NodeMessage::RawBlock { channel, seq, samples });
        }
    }

    fn send_heartbeat(&mut self, now_ms: u64, emit: &mut impl FnMut(&[u8])) {
        self.next_heartbeat_ms = now_ms.saturating_add(self.config.heartbeat_period_ms);
        let tripped = self.interlock.is_tripped();
        self.send(emit, |seq| NodeMessage::Heartbeat { seq, uptime_ms: now_ms, tripped });
    }

    fn report_trip(&mut self, emit: &mut impl FnMut(&[u8])) {
        if let Some(cause) = self.interlock.take_new_trip() {
            self.send(emit, |seq| NodeMessage::Tripped { seq, cause });
        }
    }

    fn send(&mut self, emit: &mut impl FnMut(&[u8]), build: impl FnOnce(u32) -> NodeMessage) {
        match self.node.encode(&mut self.out, build) {
            Ok(n) => {
                if let Some(frame) = self.out.get(..n) {
                    emit(frame);
                }
            }
            Err(_) => self.encode_failures = self.encode_failures.wrapping_add(1),
        }
    }
}

fn keep_first<E>(acc: &mut Result<(), E>, next: Result<(), E>) {
    if acc.is_ok() {
        *acc = next;
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use edgeloop_shared::frame::{self, FrameDecoder};
    use embedded_hal_mock::eh1::{
        MockError,
        digital::{Mock, State, Transaction},
    };

    use super::*;

    const WINDOW: usize = 8;
    const CONFIG: Config =
        Config { channels: Channels { acceleration: [10, 11, 12], temperature: 20 }, heartbeat_period_ms: 1_000 };

    fn low() -> Transaction {
        Transaction::set(State::Low)
    }

    fn high() -> Transaction {
        Transaction::set(State::High)
    }

    /// Frames the sampler emitted, decoded as the agent would.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
    }

    impl Wire {
        fn emit(&mut self) -> impl FnMut(&[u8]) + '_ {
            |frame: &[u8]| {
                assert_eq!(frame.last(), Some(&0), "a whole frame per call");
                self.bytes.extend_from_slice(frame);
            }
        }

        fn take(&mut self) -> Vec<NodeMessage> {
            let mut dec = FrameDecoder::<MAX_WIRE_FRAME>::new();
            let mut out = Vec::new();
            dec.feed::<NodeMessage>(&std::mem::take(&mut self.bytes), |r| out.push(r.unwrap()));
            out
        }
    }

    fn sampler(pin: &[Transaction], heartbeat_timeout_ms: Option<u64>) -> Sampler<Mock, WINDOW> {
        let config = interlock::Config { limits: Limits::new(80.0, 1.0).unwrap(), heartbeat_timeout_ms };
        Sampler::new(Interlock::new(Mock::new(pin), config), CONFIG)
    }

    fn command<P: OutputPin, const N: usize>(
        s: &mut Sampler<P, N>,
        now_ms: u64,
        msg: &GatewayMessage,
        wire: &mut Wire,
    ) -> PinResult<P> {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode(msg, &mut buf).unwrap();
        let mut result = Ok(());
        for &b in &buf[..n] {
            keep_first(&mut result, s.on_byte(now_ms, b, &mut wire.emit()));
        }
        result
    }

    /// A window with vibration of amplitude `a` on X around 1 g of gravity on Z.
    fn window(a: f32) -> Vec<Acceleration> {
        (0..WINDOW).map(|i| Acceleration { x: if i % 2 == 0 { a } else { -a }, y: 0.0, z: 1.0 }).collect()
    }

    /// A sampler past power-on: both sensors read, reset, relay energised.
    fn running(pin_after_start: &[Transaction], heartbeat_timeout_ms: Option<u64>) -> (Sampler<Mock, WINDOW>, Wire) {
        let mut pin = vec![low(), high()];
        pin.extend_from_slice(pin_after_start);
        let mut s = sampler(&pin, heartbeat_timeout_ms);
        let mut wire = Wire::default();
        s.poll(0, &mut wire.emit()).unwrap();
        s.on_temperature(Ok::<_, ()>(25.0), &mut wire.emit()).unwrap();
        s.on_acceleration(Ok::<_, ()>(&window(0.1)[..]), &mut wire.emit()).unwrap();
        command(&mut s, 5, &GatewayMessage::Reset, &mut wire).unwrap();
        assert!(!s.interlock().is_tripped());
        wire.take();
        (s, wire)
    }

    #[test]
    fn after_power_on_the_machine_waits_for_readings_and_a_reset() {
        let mut s = sampler(&[low(), high()], None);
        let mut wire = Wire::default();
        s.poll(0, &mut wire.emit()).unwrap();
        assert_eq!(wire.take(), vec![NodeMessage::Heartbeat { seq: 1, uptime_ms: 0, tripped: true }]);

        command(&mut s, 1, &GatewayMessage::Reset, &mut wire).unwrap();
        assert_eq!(
            wire.take(),
            vec![NodeMessage::ResetRefused {
                seq: 2,
                cause: InterlockCause::NoReading { sensor: Sensor::Thermometer }
            }]
        );

        s.on_temperature(Ok::<_, ()>(25.0), &mut wire.emit()).unwrap();
        s.on_acceleration(Ok::<_, ()>(&window(0.1)[..]), &mut wire.emit()).unwrap();
        command(&mut s, 2, &GatewayMessage::Reset, &mut wire).unwrap();
        let msgs = wire.take();
        assert_eq!(msgs.first(), Some(&NodeMessage::Reading { channel: 20, seq: 3, ts_us: None, value: 25.0 }));
        assert_eq!(msgs.last(), Some(&NodeMessage::Heartbeat { seq: 7, uptime_ms: 2, tripped: false }));
        s.release().done();
    }

    #[test]
    fn a_full_window_sends_features_per_axis_with_gravity_removed() {
        let (mut s, mut wire) = running(&[], None);
        let samples = window(0.5);
        s.on_acceleration(Ok::<_, ()>(&samples[..WINDOW - 1]), &mut wire.emit()).unwrap();
        assert_eq!(wire.take(), vec![], "nothing before the window is full");
        s.on_acceleration(Ok::<_, ()>(&samples[WINDOW - 1..]), &mut wire.emit()).unwrap();
        let msgs = wire.take();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let features: Vec<_> = msgs
            .iter()
            .map(|m| match *m {
                NodeMessage::Features { channel, rms, peak, peak_to_peak, crest, .. } => {
                    (channel, [rms, peak, peak_to_peak, crest])
                }
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(features, [(10, [0.5, 0.5, 1.0, 1.0]), (11, [0.0; 4]), (12, [0.0; 4])]);
        assert!(!s.interlock().is_tripped());
        s.release().done();
    }

    #[test]
    fn vibration_over_the_limit_stops_the_machine_and_says_why() {
        let (mut s, mut wire) = running(&[low()], None);
        s.on_acceleration(Ok::<_, ()>(&window(1.5)[..]), &mut wire.emit()).unwrap();
        let msgs = wire.take();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(matches!(msgs[3], NodeMessage::Tripped { cause: InterlockCause::OverVibration { rms_g: 1.5 }, .. }));
        s.on_acceleration(Ok::<_, ()>(&window(2.0)[..]), &mut wire.emit()).unwrap();
        assert_eq!(wire.take().len(), 3, "one trip, reported once");
        s.release().done();
    }

    #[test]
    fn a_nan_sample_trips_as_an_accelerometer_fault() {
        let (mut s, mut wire) = running(&[low()], None);
        let mut samples = window(0.1);
        samples[3].x = f32::NAN;
        s.on_acceleration(Ok::<_, ()>(&samples[..]), &mut wire.emit()).unwrap();
        assert_eq!(s.interlock().cause(), Some(InterlockCause::SensorFault { sensor: Sensor::Accelerometer }));
        assert_eq!(wire.take().len(), 4, "three features and the trip");
        s.release().done();
    }

    #[test]
    fn a_failed_read_is_a_fault_and_drops_the_partial_window() {
        let (mut s, mut wire) = running(&[low(), high()], None);
        let samples = window(0.1);
        s.on_acceleration(Ok::<_, ()>(&samples[..3]), &mut wire.emit()).unwrap();
        s.on_acceleration(Err("bus"), &mut wire.emit()).unwrap();
        assert_eq!(
            wire.take(),
            vec![NodeMessage::Tripped { seq: 7, cause: InterlockCause::SensorFault { sensor: Sensor::Accelerometer } }]
        );
        command(&mut s, 10, &GatewayMessage::Reset, &mut wire).unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::ResetRefused { .. }]));
        // The three samples before the fault do not count towards the next window.
        s.on_acceleration(Ok::<_, ()>(&samples[..WINDOW - 1]), &mut wire.emit()).unwrap();
        assert_eq!(wire.take(), vec![]);
        s.on_acceleration(Ok::<_, ()>(&samples[WINDOW - 1..]), &mut wire.emit()).unwrap();
        assert_eq!(wire.take().len(), 3);
        command(&mut s, 20, &GatewayMessage::Reset, &mut wire).unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Heartbeat { tripped: false, .. }]));
        s.release().done();
    }

    #[test]
    fn thermometer_readings_are_sent_and_checked() {
        let (mut s, mut wire) = running(&[low()], None);
        s.on_temperature(Ok::<_, ()>(85.0), &mut wire.emit()).unwrap();
        let msgs = wire.take();
        assert!(matches!(
            msgs[..],
            [
                NodeMessage::Reading { channel: 20, value: 85.0, .. },
                NodeMessage::Tripped { cause: InterlockCause::OverTemperature { celsius: 85.0 }, .. }
            ]
        ));
        s.on_temperature(Err(()), &mut wire.emit()).unwrap();
        assert_eq!(wire.take(), vec![], "already tripped: nothing new to say");
        assert_eq!(s.interlock().cause(), Some(InterlockCause::OverTemperature { celsius: 85.0 }));
        s.release().done();
    }

    #[test]
    fn raw_samples_stream_only_while_asked() {
        let (mut s, mut wire) = running(&[], None);
        let block: Vec<Acceleration> =
            (0..RAW_BLOCK_LEN).map(|i| Acceleration { x: i as f32 * 0.01, y: -0.02, z: 1.0 }).collect();
        s.on_acceleration(Ok::<_, ()>(&block[..]), &mut wire.emit()).unwrap();
        assert!(wire.take().iter().all(|m| matches!(m, NodeMessage::Features { .. })));

        command(&mut s, 10, &GatewayMessage::StreamRaw { enabled: true }, &mut wire).unwrap();
        assert!(s.is_streaming());
        s.on_acceleration(Ok::<_, ()>(&block[..]), &mut wire.emit()).unwrap();
        let raw: Vec<_> = wire
            .take()
            .into_iter()
            .filter_map(|m| match m {
                NodeMessage::RawBlock { channel, samples, .. } => Some((channel, samples)),
                _ => None,
            })
            .collect();
        assert_eq!(raw.len(), 3);
        assert_eq!(raw[0].0, 10);
        assert_eq!(raw[0].1.to_vec(), block.iter().map(|a| a.x).collect::<Vec<_>>());
        assert_eq!((raw[1].0, raw[1].1), (11, [-0.02; RAW_BLOCK_LEN]));
        assert_eq!((raw[2].0, raw[2].1), (12, [1.0; RAW_BLOCK_LEN]));

        command(&mut s, 20, &GatewayMessage::StreamRaw { enabled: false }, &mut wire).unwrap();
        s.on_acceleration(Ok::<_, ()>(&block[..]), &mut wire.emit()).unwrap();
        assert!(wire.take().iter().all(|m| !matches!(m, NodeMessage::RawBlock { .. })));
        s.release().done();
    }

    #[test]
    fn set_limits_answers_with_the_limits_in_force() {
        let (mut s, mut wire) = running(&[low()], None);
        command(&mut s, 10, &GatewayMessage::SetLimits { temperature_c: 50.0, vibration_rms_g: 0.2 }, &mut wire)
            .unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Limits { temperature_c: 50.0, vibration_rms_g: 0.2, .. }]));
        command(&mut s, 11, &GatewayMessage::SetLimits { temperature_c: f32::NAN, vibration_rms_g: 5.0 }, &mut wire)
            .unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Limits { temperature_c: 50.0, vibration_rms_g: 0.2, .. }]));
        s.on_acceleration(Ok::<_, ()>(&window(0.3)[..]), &mut wire.emit()).unwrap();
        assert_eq!(s.interlock().cause(), Some(InterlockCause::OverVibration { rms_g: 0.3 }));
        s.release().done();
    }

    #[test]
    fn a_gateway_trip_latches_until_reset_and_ping_reports_it() {
        let (mut s, mut wire) = running(&[low(), high()], None);
        command(&mut s, 10, &GatewayMessage::Trip { rule: 4 }, &mut wire).unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Tripped { cause: InterlockCause::Commanded { rule: 4 }, .. }]));
        for b in [0x55, 0x12, 0x00] {
            s.on_byte(11, b, &mut wire.emit()).unwrap();
        }
        assert_eq!(s.node().bad_commands, 1);
        command(&mut s, 12, &GatewayMessage::Ping { seq: 1 }, &mut wire).unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Heartbeat { uptime_ms: 12, tripped: true, .. }]));
        command(&mut s, 13, &GatewayMessage::Reset, &mut wire).unwrap();
        assert!(matches!(wire.take()[..], [NodeMessage::Heartbeat { tripped: false, .. }]));
        s.release().done();
    }

    #[test]
    fn heartbeats_go_out_periodically() {
        let (mut s, mut wire) = running(&[], None);
        // The reset's answer at 5 ms was a heartbeat: the next is due a period later.
        s.poll(1_004, &mut wire.emit()).unwrap();
        assert_eq!(wire.take(), vec![]);
        s.poll(1_005, &mut wire.emit()).unwrap();
        s.poll(1_500, &mut wire.emit()).unwrap();
        s.poll(2_005, &mut wire.emit()).unwrap();
        let beats: Vec<u64> = wire
            .take()
            .into_iter()
            .map(|m| match m {
                NodeMessage::Heartbeat { uptime_ms, tripped: false, .. } => uptime_ms,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(beats, [1_005, 2_005]);
        s.release().done();
    }

    #[test]
    fn a_silent_gateway_stops_the_machine() {
        let (mut s, mut wire) = running(&[low()], Some(2_000));
        command(&mut s, 1_000, &GatewayMessage::Ping { seq: 9 }, &mut wire).unwrap();
        s.poll(3_000, &mut wire.emit()).unwrap();
        assert!(!s.interlock().is_tripped());
        s.poll(3_001, &mut wire.emit()).unwrap();
        let msgs = wire.take();
        assert!(
            msgs.iter().any(|m| matches!(
                m,
                NodeMessage::Tripped { cause: InterlockCause::HeartbeatLost { silent_ms: 2_001 }, .. }
            )),
            "{msgs:?}"
        );
        s.release().done();
    }

    #[test]
    fn a_pin_fault_is_returned_after_the_frames_went_out() {
        let err = MockError::Io(ErrorKind::BrokenPipe);
        let (mut s, mut wire) = running(&[low().with_error(err.clone()), low()], None);
        assert_eq!(s.on_acceleration(Ok::<_, ()>(&window(3.0)[..]), &mut wire.emit()), Err(interlock::Error::Pin(err)));
        let msgs = wire.take();
        assert_eq!(msgs.len(), 4, "features and the trip still went out: {msgs:?}");
        s.poll(10, &mut wire.emit()).unwrap();
        s.release().done();
    }
}
