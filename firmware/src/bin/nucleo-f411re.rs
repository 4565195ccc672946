//! The sensor node on an ST Nucleo-F411RE (STM32F411RE, Cortex-M4F at 100 MHz from the internal
//! oscillator, so it runs whatever the board's HSE solder bridges say).
//!
//! Wiring (Arduino header names in brackets):
//! - I2C1 at 400 kHz: PB8 SCL [D15], PB9 SDA [D14], shared by the ADXL345 (address 0x53, ALT
//!   ADDRESS low) and the TMP117 (address 0x48, ADD0 to GND). External 4.7 kΩ pull-ups.
//! - USART2 at 115200 baud 8N1: PA2 TX / PA3 RX, the ST-LINK's virtual COM port: the USB cable to
//!   the gateway is the link.
//! - PA5 [D13], also the green LED LD2: drives the machine-enable relay's driver. High (LED on)
//!   energises the relay and lets the machine run; low stops it. The driver needs a pull-down, so
//!   that a floating pin (reset, blank MCU, cut wire) keeps the relay de-energised.
//!
//! Fail-safe: the independent watchdog resets the MCU when the loop stops coming round (a hung
//! I2C bus: the HAL's blocking transfers wait for the bus without a timeout; a panic: panic-halt
//! stops right there), and a reset leaves PA5 floating, so the machine stops; after the reset the
//! interlock starts latched and waits for the gateway's reset command. Sensor faults trip the
//! interlock through [`NodeLoop`]; nothing in the loop unwraps.
//!
//! The UART works from its interrupt through two [`ByteQueue`]s, so the loop never waits on the
//! link: a frame that does not fit the transmit queue is dropped whole (the gateway sees the
//! sequence gap). 115200 baud carries the window features easily; raw streaming at 3200 Hz needs
//! about 43 kB/s, so most raw blocks are dropped at this baud rate.
//!
//! Build: `cargo build --release --features board-nucleo-f411re --bin nucleo-f411re` in
//! `firmware/`; flash e.g. with `probe-rs run --chip STM32F411RETx` on the ELF.
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use critical_section::Mutex;
use edgeloop_firmware::byte_queue::ByteQueue;
use edgeloop_firmware::drivers::adxl345::{self, Adxl345};
use edgeloop_firmware::drivers::tmp117::{self, Tmp117};
use edgeloop_firmware::interlock::{self, Interlock, Limits};
use edgeloop_firmware::node_loop::{self, NodeLoop};
use edgeloop_firmware::sampler::{self, Sampler};
use embedded_hal_bus::i2c::RefCellDevice;
use embedded_hal_nb::nb;
use embedded_hal_nb::serial::{Read as _, Write as _};
use panic_halt as _;
use stm32f4xx_hal::gpio::PinState;
use stm32f4xx_hal::i2c::{DutyCycle, I2c, Mode};
use stm32f4xx_hal::pac::{self, USART2, interrupt};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::Config as ClockConfig;
use stm32f4xx_hal::serial::{Rx, RxListen, Serial, Tx, TxISR, TxListen};
use stm32f4xx_hal::watchdog::IndependentWatchdog;

const BAUD: u32 = 115_200;
/// The node's own trip limits until the gateway sets others.
#[allow(clippy::panic)] // evaluated at compile time: a bad constant fails the build
const LIMITS: Limits = match Limits::new(80.0, 2.0) {
    Ok(limits) => limits,
    Err(_) => panic!("invalid default limits"),
};
/// `None`: the machine keeps running when the gateway is silent (the agent sends commands only
/// when a rule acts). `Some(ms)` trips the relay after that much silence.
const HEARTBEAT_TIMEOUT_MS: Option<u64> = None;
/// Longest time the loop may take before the watchdog resets the MCU.
const WATCHDOG_MS: u32 = 500;

/// Milliseconds since start, counted by SysTick.
static MILLIS: AtomicU32 = AtomicU32::new(0);
/// The UART and its queues, shared between the loop and the USART2 interrupt; its counters are
/// there for a debugger to read.
static LINK: Mutex<RefCell<Option<Link>>> = Mutex::new(RefCell::new(None));

struct Link {
    rx: Rx<USART2>,
    tx: Tx<USART2>,
    received: ByteQueue<256>,
    to_send: ByteQueue<1024>,
    /// Bytes lost to a full receive queue or to UART errors (overrun, framing, noise); the frame
    /// decoder resynchronises at the next delimiter.
    rx_lost: u32,
    /// Frames dropped because the transmit queue was full.
    tx_dropped: u32,
}

impl Link {
    /// Runs in the interrupt: moves received bytes into the queue and queued bytes out.
    fn service(&mut self) {
        // Bounded: each read either takes a byte or clears an error flag.
        for _ in 0..16 {
            match self.rx.read() {
                Ok(byte) => {
                    if !self.received.push(byte) {
                        self.rx_lost = self.rx_lost.wrapping_add(1);
                    }
                }
                Err(nb::Error::WouldBlock) => break,
                Err(nb::Error::Other(_)) => self.rx_lost = self.rx_lost.wrapping_add(1),
            }
        }
        while self.tx.is_tx_empty() {
            let Some(byte) = self.to_send.peek() else {
                self.tx.unlisten();
                break;
            };
            if self.tx.write(byte).is_err() {
                break;
            }
            self.to_send.pop();
        }
    }
}

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

#[interrupt]
fn USART2() {
    critical_section::with(|cs| {
        if let Some(link) = LINK.borrow_ref_mut(cs).as_mut() {
            link.service();
        }
    });
}

/// Extends the 32-bit SysTick count (it wraps after 49 days) to 64 bits; the loop reads it far
/// more often than that.
struct Clock {
    last: u32,
    wraps: u64,
}

impl Clock {
    fn now_ms(&mut self) -> u64 {
        let now = MILLIS.load(Ordering::Relaxed);
        if now < self.last {
            self.wraps += 1;
        }
        self.last = now;
        (self.wraps << 32) | u64::from(now)
    }
}

/// Queues a frame for sending, whole or not at all.
fn send(frame: &[u8]) {
    critical_section::with(|cs| {
        if let Some(link) = LINK.borrow_ref_mut(cs).as_mut() {
            if link.to_send.push_all(frame) {
                link.tx.listen();
            } else {
                link.tx_dropped = link.tx_dropped.wrapping_add(1);
            }
        }
    });
}

/// Takes what the gateway sent since the last call.
fn receive(out: &mut [u8]) -> usize {
    critical_section::with(|cs| LINK.borrow_ref_mut(cs).as_mut().map_or(0, |link| link.received.pop_into(out)))
}

#[entry]
fn main() -> ! {
    // Taken once, at start: they are there. Without them there is nothing to run, and the
    // watchdog is not started yet, so idle with the relay pin untouched (floating: stopped).
    let (Some(dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        loop {
            cortex_m::asm::wfi();
        }
    };
    let mut rcc = dp.RCC.freeze(ClockConfig::hsi().sysclk(100.MHz()));
    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);

    // The relay first: low (stopped) before anything else can happen.
    let relay = gpioa.pa5.into_push_pull_output_in_state(PinState::Low);

    let mut watchdog = IndependentWatchdog::new(dp.IWDG);
    // Paused while a debugger halts the core, so stepping through the code does not reset it.
    watchdog.stop_on_debug(&dp.DBGMCU, true);
    watchdog.start(WATCHDOG_MS.millis());

    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(rcc.clocks.sysclk().raw() / 1_000 - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_counter();
    cp.SYST.enable_interrupt();

    let i2c = I2c::new(dp.I2C1, (gpiob.pb8, gpiob.pb9), Mode::fast(400.kHz(), DutyCycle::Ratio2to1), &mut rcc);
    let bus = RefCell::new(i2c);

    // 115200 baud from a 50 MHz APB1 is always valid; were it not, the node would still guard
    // the machine on its own limits, with a silent link.
    if let Ok(serial) = Serial::new(dp.USART2, (gpioa.pa2, gpioa.pa3), BAUD.bps(), &mut rcc) {
        let (tx, mut rx) = serial.split();
        rx.listen();
        critical_section::with(|cs| {
            LINK.borrow_ref_mut(cs).replace(Link {
                rx,
                tx,
                received: ByteQueue::new(),
                to_send: ByteQueue::new(),
                rx_lost: 0,
                tx_dropped: 0,
            });
        });
        // SAFETY: the handler touches only `LINK`, inside a critical section, and `LINK` is
        // filled in before the interrupt is unmasked. Nothing relies on USART2 being masked.
        #[allow(unsafe_code)]
        unsafe {
            cortex_m::peripheral::NVIC::unmask(pac::Interrupt::USART2);
        }
    }

    let interlock =
        Interlock::new(relay, interlock::Config { limits: LIMITS, heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS });
    let sampler = Sampler::<_, { node_loop::WINDOW }>::new(
        interlock,
        sampler::Config { channels: sampler::Channels::default(), heartbeat_period_ms: 1_000 },
    );
    let mut node = NodeLoop::new(
        Adxl345::new(RefCellDevice::new(&bus), adxl345::ADDRESS_ALT_LOW),
        Tmp117::new(RefCellDevice::new(&bus), tmp117::ADDRESS_GND),
        sampler,
        node_loop::Config::default(),
    );

    let mut clock = Clock { last: 0, wraps: 0 };
    let mut rx = [0u8; 256];
    loop {
        watchdog.feed();
        let now = clock.now_ms();
        let n = receive(&mut rx);
        // The relay pin's error type is `Infallible`: the step cannot fail.
        let Ok(()) = node.step(now, rx.get(..n).unwrap_or(&[]), &mut send);
        // Sleep until the next interrupt: SysTick wakes the loop every millisecond.
        cortex_m::asm::wfi();
    }
}
