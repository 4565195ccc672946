//! A compact columnar encoding of one sensor's series of points (issue 5: at most 3 bytes per
//! reading on the wire for a slowly varying sensor, where line protocol needs about 50).
//!
//! A sensor's timestamps are nearly periodic and its values move in small steps of a fixed
//! resolution, so the codec stores how far each point is from a prediction, in as few bits as
//! that distance needs. The ideas are Gorilla's (Pelkonen et al., VLDB 2015), with the fixed
//! choices made per series by the encoder instead, because one fixed table cannot suit both
//! nanosecond jitter and a counter that never moves.
//!
//! # Format
//!
//! Whole bytes; [`decode_series`] says how many a series used, so series can be concatenated.
//! A varint is unsigned LEB128 (7 bits a byte, low group first, at most 10 bytes); a zigzag
//! varint maps 0, -1, 1, -2, … to 0, 1, 2, 3, … first, so a small negative number stays short.
//!
//! ```text
//! varint          n, the number of points; n = 0 ends the series here
//! integer column  the n timestamps (ns)
//! 1 byte          value kind: 0x00 float, 0x10 + d decimal with d digits after the point (d ≤ 6)
//! float column    (kind 0x00) the n values' bit patterns
//! integer column  (kind 0x10 + d) the n integers k with value = k as f64 / 10^d, bit-exactly
//! ```
//!
//! The encoder writes the decimal column (with the smallest d that fits every value) when the
//! values allow one and it is shorter than the float column.
//!
//! An **integer column** of `x_0 … x_{n-1}`:
//!
//! ```text
//! zigzag varint   x_0
//! -- only when n ≥ 2:
//! 1 byte          predictor of x_i: 0 = x_{i-1} (values that hold still or wander),
//!                 1 = x_{i-1} + (x_1 - x_0) (a fixed period with jitter around it),
//!                 2 = x_{i-1} + (x_{i-1} - x_{i-2}) (Gorilla's delta of deltas: a period or
//!                 slope that drifts); at i = 1 every predictor predicts x_0
//! varint g ≥ 1    a common divisor of all residuals r_i = x_i - prediction_i
//! 4 bytes         w_0 … w_3 ≤ 64, the widths of the four size classes
//! bits            for i = 1 … n-1: z = zigzag(r_i / g) in the first class c with w_c ≥ bits(z),
//!                 as the prefix of c ('0', '10', '110', '111') then z in w_c bits
//! ```
//!
//! * The encoder tries the three predictors and keeps the shortest: jitter around a fixed period
//!   costs about 0.7 bits a point less against the first step than against the previous one
//!   (it enters the residual twice instead of three times), and values that wander by ±1 need
//!   the plain previous value.
//! * The divisor removes the zero bits a source's resolution leaves: device timestamps are
//!   microseconds × 1000 and a DS18B20 reads in steps of 0.0625 °C (625 at d = 4).
//! * The class widths are chosen per column to minimise its size (the widths worth trying are
//!   only those some residual needs, so the search is small) and w_3 is the widest residual, so
//!   nothing needs Gorilla's 64-bit escape: a strictly periodic series costs 1 bit a point and
//!   nanosecond jitter of ±50 µs about 18 (its entropy is about 17.6), where Gorilla's table for
//!   seconds would spend 36.
//! * Every difference and prediction wraps modulo 2^64 in both directions, so any i64 sequence,
//!   jumps from `i64::MIN` to `i64::MAX` included, round-trips.
//!
//! A **float column**, used when the values are not all short decimals:
//!
//! ```text
//! 8 bytes         the first value's bits, little-endian
//! -- only when n ≥ 2, for each next value, x = bits XOR the previous value's bits:
//! '0'             x = 0 (the value repeats)
//! '10' + w bits   x's meaningful bits fit the current window (leading zeros, w bits)
//! '11' + 6 bits leading zeros + 6 bits (length - 1) + length bits: a new window
//! ```
//!
//! The window starts as all 64 bits; the encoder opens a new one when x does not fit the current
//! one or when the 12 header bits buy more than they cost. Bit patterns are copied, never computed on, so NaN payloads, -0.0 and
//! subnormals survive. Decimal mode keeps a value only if `k as f64 / 10^d` gives its exact bits
//! back (so -0.0 or 0.1 + 0.2 fall back to floats); the decoder computes the same expression.
//!
//! Bits are written most significant first. Each column's bits end on a byte boundary (zero
//! padding), so a column can be encoded alone and the encoder can compare alternatives by size.
//!
//! # Never panicking
//!
//! Every read is bounds-checked and reports what it was reading and where. A point after the
//! first costs at least one bit in each column, so a forged point count can make the decoder
//! neither loop nor allocate beyond what the input bytes could describe. Since the decoder reads
//! exactly the bytes the encoder wrote and the last byte of each column carries a real bit, every
//! truncation of a valid series is an error, never a shorter series.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// One reading of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts_ns: i64,
    pub value: f64,
}

/// Why bytes do not decode as a series.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input stops before the series does.
    #[error("input ends inside the {what} (at byte {at})")]
    Truncated { what: &'static str, at: usize },
    #[error("{what} at byte {at} is a varint longer than 64 bits")]
    VarintOverflow { what: &'static str, at: usize },
    #[error("point count {count} does not fit in this target's address space")]
    CountTooLarge { count: u64 },
    #[error("point count {count} is more than the {max} allowed")]
    TooManyPoints { count: u64, max: usize },
    #[error("value kind {kind:#04x} at byte {at} is neither 0x00 (float) nor 0x10..=0x16 (decimal)")]
    ValueKind { kind: u8, at: usize },
    #[error("{what} {found} at byte {at} is not 0, 1 or 2")]
    Predictor { what: &'static str, found: u8, at: usize },
    #[error("{what} at byte {at} include {width}, more than 64 bits")]
    Width { what: &'static str, width: u8, at: usize },
    #[error("{what} at byte {at} is zero")]
    ZeroDivisor { what: &'static str, at: usize },
    #[error("float window at byte {at} has {leading} leading zeros and {len} bits, more than 64")]
    FloatWindow { leading: u8, len: u8, at: usize },
}

const FLOAT_KIND: u8 = 0x00;
const DECIMAL_KIND: u8 = 0x10;
const MAX_DECIMALS: u8 = 6;
const POW10: [f64; MAX_DECIMALS as usize + 1] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];

/// Class prefixes as (code, length): the narrowest class gets the shortest code because the
/// encoder's search puts the bulk of a column there.
const PREFIXES: [(u64, u32); 4] = [(0b0, 1), (0b10, 2), (0b110, 3), (0b111, 3)];

/// Names for errors in one integer column.
struct Names {
    first: &'static str,
    predictor: &'static str,
    divisor: &'static str,
    widths: &'static str,
    bits: &'static str,
}

const TIMESTAMPS: Names = Names {
    first: "first timestamp",
    predictor: "timestamp predictor",
    divisor: "timestamp divisor",
    widths: "timestamp class widths",
    bits: "timestamp bits",
};

const DECIMALS: Names = Names {
    first: "first decimal value",
    predictor: "decimal predictor",
    divisor: "decimal divisor",
    widths: "decimal class widths",
    bits: "decimal bits",
};

/// Appends the encoding of `points` (one sensor's series, in any order) to `out`.
pub fn encode_series(points: &[Point], out: &mut Vec<u8>) {
    put_varint(out, points.len() as u64);
    if points.is_empty() {
        return;
    }
    let timestamps: Vec<i64> = points.iter().map(|p| p.ts_ns).collect();
    encode_ints(&timestamps, out);

    let start = out.len();
    encode_floats(points, out);
    if let Some((decimals, ks)) = decimal_ints(points) {
        let mut column = alloc::vec![DECIMAL_KIND | decimals];
        encode_ints(&ks, &mut column);
        if column.len() < out.len().saturating_sub(start) {
            out.truncate(start);
            out.extend_from_slice(&column);
        }
    }
}

/// Decodes one series from the front of `bytes`; returns its points and how many bytes it took
/// (the rest may hold the next series).
///
/// # Errors
///
/// [`CodecError::Truncated`] when `bytes` ends before the series does (including every proper
/// prefix of a valid encoding), and the other variants for bytes no encoder writes.
pub fn decode_series(bytes: &[u8]) -> Result<(Vec<Point>, usize), CodecError> {
    decode_series_at_most(bytes, usize::MAX)
}

/// [`decode_series`], refusing a series of more than `max` points before decoding any of them.
pub fn decode_series_at_most(bytes: &[u8], max: usize) -> Result<(Vec<Point>, usize), CodecError> {
    let mut input = Input { bytes, pos: 0 };
    let count = input.varint("point count")?;
    let n = usize::try_from(count).map_err(|_| CodecError::CountTooLarge { count })?;
    if n > max {
        return Err(CodecError::TooManyPoints { count, max });
    }
    if n == 0 {
        return Ok((Vec::new(), input.pos));
    }
    let timestamps = decode_ints(&mut input, n, &TIMESTAMPS)?;
    let at = input.pos;
    let kind = input.byte("value kind")?;
    let values: Vec<f64> = if kind == FLOAT_KIND {
        decode_floats(&mut input, n)?
    } else {
        let scale = POW10
            .get(usize::from(kind.wrapping_sub(DECIMAL_KIND)))
            .copied()
            .ok_or(CodecError::ValueKind { kind, at })?;
        decode_ints(&mut input, n, &DECIMALS)?.into_iter().map(|k| k as f64 / scale).collect()
    };
    let points = timestamps.into_iter().zip(values).map(|(ts_ns, value)| Point { ts_ns, value }).collect();
    Ok((points, input.pos))
}

// ---------------------------------------------------------------------------------------------
// Integer columns

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Predictor {
    Previous = 0,
    FixedStep = 1,
    PreviousStep = 2,
}

/// Walks a column in order; the encoder and decoder share it so their predictions cannot differ.
struct Stepper {
    predictor: Predictor,
    prev: i64,
    prev_step: i64,
    first_step: Option<i64>,
}

impl Stepper {
    fn new(predictor: Predictor, first: i64) -> Self {
        Self { predictor, prev: first, prev_step: 0, first_step: None }
    }

    fn predicted_step(&self) -> i64 {
        match self.predictor {
            Predictor::Previous => 0,
            Predictor::FixedStep => self.first_step.unwrap_or(0),
            Predictor::PreviousStep => self.prev_step,
        }
    }

    fn advance(&mut self, x: i64) {
        let step = x.wrapping_sub(self.prev);
        self.first_step.get_or_insert(step);
        self.prev_step = step;
        self.prev = x;
    }

    fn residual(&mut self, x: i64) -> i64 {
        let r = x.wrapping_sub(self.prev).wrapping_sub(self.predicted_step());
        self.advance(x);
        r
    }

    fn apply(&mut self, residual: i64) -> i64 {
        let x = self.prev.wrapping_add(self.predicted_step()).wrapping_add(residual);
        self.advance(x);
        x
    }
}

fn residuals(xs: &[i64], predictor: Predictor) -> impl Iterator<Item = i64> + '_ {
    let mut stepper = Stepper::new(predictor, xs.first().copied().unwrap_or(0));
    xs.iter().skip(1).map(move |&x| stepper.residual(x))
}

/// `r / divisor` for a divisor of `r`: exact, and within i64 because `|r| ≤ 2^63`.
fn divide(r: i64, divisor: u64) -> i64 {
    (i128::from(r) / i128::from(divisor)) as i64
}

/// How one integer column would be written, and its size.
struct Plan {
    predictor: Predictor,
    divisor: u64,
    widths: [u8; 4],
    bits: u64,
}

impl Plan {
    fn new(xs: &[i64], predictor: Predictor) -> Self {
        let divisor = residuals(xs, predictor).fold(0, |g, r| gcd(g, r.unsigned_abs())).max(1);
        let mut histogram = [0u64; 65];
        for r in residuals(xs, predictor) {
            if let Some(slot) = histogram.get_mut(bit_width(zigzag(divide(r, divisor))) as usize) {
                *slot = slot.saturating_add(1);
            }
        }
        let (widths, bits) = best_widths(&histogram);
        Plan { predictor, divisor, widths, bits }
    }

    fn bytes(&self) -> u64 {
        (1 + 4 + varint_len(self.divisor) as u64).saturating_add(self.bits.div_ceil(8))
    }
}

/// The class widths that make a column shortest, given how many residuals need each width
/// (`histogram[w]`, w in 0..=64), and the column's size in bits.
fn best_widths(histogram: &[u64; 65]) -> ([u8; 4], u64) {
    // A class is never worse off narrowed to the widest residual it holds, so only widths some
    // residual needs are worth trying: a handful in practice.
    let occupied: Vec<u8> = (0u8..=64).filter(|&w| histogram.get(usize::from(w)).is_some_and(|&c| c > 0)).collect();
    let Some(&widest) = occupied.last() else {
        return ([0; 4], 0);
    };
    let mut at_most = [0u64; 65];
    let mut total = 0u64;
    for (sum, &count) in at_most.iter_mut().zip(histogram) {
        total = total.saturating_add(count);
        *sum = total;
    }
    let upto = |w: u8| at_most.get(usize::from(w)).copied().unwrap_or(total);
    let cost = |count: u64, prefix: u32, width: u8| count.saturating_mul(u64::from(prefix) + u64::from(width));

    let mut best = ([widest; 4], cost(total, 1, widest));
    for (i, &w0) in occupied.iter().enumerate() {
        for (j, &w1) in occupied.iter().enumerate().skip(i) {
            for &w2 in occupied.iter().skip(j) {
                let bits = cost(upto(w0), 1, w0)
                    .saturating_add(cost(upto(w1).saturating_sub(upto(w0)), 2, w1))
                    .saturating_add(cost(upto(w2).saturating_sub(upto(w1)), 3, w2))
                    .saturating_add(cost(total.saturating_sub(upto(w2)), 3, widest));
                if bits < best.1 {
                    best = ([w0, w1, w2, widest], bits);
                }
            }
        }
    }
    best
}

fn encode_ints(xs: &[i64], out: &mut Vec<u8>) {
    let Some(&first) = xs.first() else {
        return;
    };
    put_varint(out, zigzag(first));
    if xs.len() < 2 {
        return;
    }
    let plans = [Predictor::Previous, Predictor::FixedStep, Predictor::PreviousStep].map(|p| Plan::new(xs, p));
    let Some(plan) = plans.iter().min_by_key(|p| p.bytes()) else {
        return;
    };
    out.push(plan.predictor as u8);
    put_varint(out, plan.divisor);
    out.extend_from_slice(&plan.widths);
    let mut bits = BitWriter::new(out);
    for r in residuals(xs, plan.predictor) {
        let z = zigzag(divide(r, plan.divisor));
        let need = bit_width(z);
        // w_3 is the widest residual, so the fallback is never taken; it only avoids a panic path.
        let (&width, &(code, len)) =
            plan.widths.iter().zip(&PREFIXES).find(|(w, _)| u32::from(**w) >= need).unwrap_or((&64, &PREFIXES[3]));
        bits.put(code, len);
        bits.put(z, u32::from(width));
    }
    bits.finish();
}

fn decode_ints(input: &mut Input<'_>, n: usize, names: &Names) -> Result<Vec<i64>, CodecError> {
    let first = unzigzag(input.varint(names.first)?);
    let mut xs = Vec::with_capacity(n.min(input.max_points()));
    xs.push(first);
    if n < 2 {
        return Ok(xs);
    }
    let at = input.pos;
    let predictor = match input.byte(names.predictor)? {
        0 => Predictor::Previous,
        1 => Predictor::FixedStep,
        2 => Predictor::PreviousStep,
        found => return Err(CodecError::Predictor { what: names.predictor, found, at }),
    };
    let at = input.pos;
    let divisor = input.varint(names.divisor)?;
    if divisor == 0 {
        return Err(CodecError::ZeroDivisor { what: names.divisor, at });
    }
    let at = input.pos;
    let mut widths = [0u8; 4];
    for w in &mut widths {
        *w = input.byte(names.widths)?;
        if *w > 64 {
            return Err(CodecError::Width { what: names.widths, width: *w, at });
        }
    }
    let mut bits = input.bits(names.bits);
    let mut stepper = Stepper::new(predictor, first);
    for _ in 1..n {
        let width = *widths.get(bits.class()?).unwrap_or(&64);
        let q = unzigzag(bits.read(u32::from(width))?);
        // Exact for what the encoder wrote (r = q·g); anything else wraps harmlessly.
        let r = (q as u64).wrapping_mul(divisor) as i64;
        xs.push(stepper.apply(r));
    }
    input.pos = bits.end();
    Ok(xs)
}

// ---------------------------------------------------------------------------------------------
// Values

/// The smallest number of decimals `d` for which every value is exactly `k / 10^d`, and the ks.
fn decimal_ints(points: &[Point]) -> Option<(u8, Vec<i64>)> {
    let mut ks = Vec::with_capacity(points.len());
    'decimals: for (d, &scale) in (0u8..).zip(&POW10) {
        ks.clear();
        for p in points {
            match exact_int(p.value, scale) {
                Some(k) => ks.push(k),
                None => continue 'decimals,
            }
        }
        return Some((d, ks));
    }
    None
}

/// The k with `k as f64 / scale` bit-identical to `value`, if there is one near `value · scale`.
fn exact_int(value: f64, scale: f64) -> Option<i64> {
    // `as` saturates (NaN gives 0), and the product is off by less than one for any k whose
    // f64 is exact, so truncation lands on k or next to it.
    let guess = (value * scale) as i64;
    [Some(guess), guess.checked_add(1), guess.checked_sub(1)]
        .into_iter()
        .flatten()
        .find(|&k| (k as f64 / scale).to_bits() == value.to_bits())
}

fn encode_floats(points: &[Point], out: &mut Vec<u8>) {
    out.push(FLOAT_KIND);
    let Some((first, rest)) = points.split_first() else {
        return;
    };
    let mut prev = first.value.to_bits();
    out.extend_from_slice(&prev.to_le_bytes());
    if rest.is_empty() {
        return;
    }
    let mut bits = BitWriter::new(out);
    let (mut window_lead, mut window_len) = (0u32, 64u32);
    for p in rest {
        let cur = p.value.to_bits();
        let x = cur ^ prev;
        prev = cur;
        if x == 0 {
            bits.put(0, 1);
            continue;
        }
        let lead = x.leading_zeros();
        let trail = x.trailing_zeros();
        let len = 64 - lead - trail;
        let window_shift = 64 - window_lead - window_len;
        // A new window costs 12 header bits, so reuse the old one unless it wastes more.
        if lead >= window_lead && trail >= window_shift && window_len <= len + 12 {
            bits.put(0b10, 2);
            bits.put(x >> window_shift, window_len);
        } else {
            bits.put(0b11, 2);
            bits.put(u64::from(lead), 6);
            bits.put(u64::from(len - 1), 6);
            bits.put(x >> trail, len);
            (window_lead, window_len) = (lead, len);
        }
    }
    bits.finish();
}

fn decode_floats(input: &mut Input<'_>, n: usize) -> Result<Vec<f64>, CodecError> {
    let mut prev = u64::from_le_bytes(input.array("first value")?);
    let mut values = Vec::with_capacity(n.min(input.max_points()));
    values.push(f64::from_bits(prev));
    if n < 2 {
        return Ok(values);
    }
    let mut bits = input.bits("value bits");
    // Invariant: 1 ≤ window_len and window_lead + window_len ≤ 64, so the shifts stay below 64.
    let (mut window_lead, mut window_len) = (0u32, 64u32);
    for _ in 1..n {
        if bits.read(1)? == 1 {
            if bits.read(1)? == 1 {
                let at = bits.at();
                let lead = bits.read(6)? as u32;
                let len = bits.read(6)? as u32 + 1;
                if lead + len > 64 {
                    return Err(CodecError::FloatWindow { leading: lead as u8, len: len as u8, at });
                }
                (window_lead, window_len) = (lead, len);
            }
            prev ^= bits.read(window_len)? << (64 - window_lead - window_len);
        }
        values.push(f64::from_bits(prev));
    }
    input.pos = bits.end();
    Ok(values)
}

// ---------------------------------------------------------------------------------------------
// Bytes and bits

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn bit_width(z: u64) -> u32 {
    64 - z.leading_zeros()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (bit_width(v).max(1) as usize).div_ceil(7)
}

/// The input's bytes and how many of them have been read.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let b = *self.bytes.get(self.pos).ok_or(CodecError::Truncated { what, at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0; N];
        for b in &mut a {
            *b = self.byte(what)?;
        }
        Ok(a)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let at = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            // The tenth byte holds bit 63 alone.
            if shift == 63 && b > 1 {
                return Err(CodecError::VarintOverflow { what, at });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::VarintOverflow { what, at })
    }

    /// The most points the rest of the input could describe: each costs at least one bit.
    fn max_points(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos).saturating_mul(8).saturating_add(1)
    }

    fn bits(&self, what: &'static str) -> BitReader<'a> {
        BitReader { bytes: self.bytes, byte: self.pos, used: 0, what }
    }
}

/// Reads bits most significant first, starting at a byte boundary.
struct BitReader<'a> {
    bytes: &'a [u8],
    byte: usize,
    /// Bits of `bytes[byte]` already read, 0..8.
    used: u32,
    what: &'static str,
}

impl BitReader<'_> {
    /// `width` ≤ 64 bits as a number.
    fn read(&mut self, width: u32) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut left = width.min(64);
        while left > 0 {
            let b = *self.bytes.get(self.byte).ok_or(CodecError::Truncated { what: self.what, at: self.byte })?;
            let avail = 8 - self.used;
            let take = avail.min(left);
            let chunk = (u32::from(b) >> (avail - take)) & ((1 << take) - 1);
            v = (v << take) | u64::from(chunk);
            left -= take;
            self.used += take;
            if self.used == 8 {
                self.used = 0;
                self.byte += 1;
            }
        }
        Ok(v)
    }

    /// The class a prefix names: '0', '10', '110', '111'.
    fn class(&mut self) -> Result<usize, CodecError> {
        for class in 0..3 {
            if self.read(1)? == 0 {
                return Ok(class);
            }
        }
        Ok(3)
    }

    fn at(&self) -> usize {
        self.byte
    }

    /// The position after the last byte this reader touched (padding included).
    fn end(&self) -> usize {
        self.byte + usize::from(self.used > 0)
    }
}

/// Writes bits most significant first, padding the last byte with zeros.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u32,
    /// Bits in `acc`, 0..8.
    filled: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, acc: 0, filled: 0 }
    }

    /// The low `width` (≤ 64) bits of `value`.
    fn put(&mut self, value: u64, width: u32) {
        let mut left = width.min(64);
        while left > 0 {
            let take = (8 - self.filled).min(left);
            let chunk = (value >> (left - take)) & ((1 << take) - 1);
            self.acc = (self.acc << take) | chunk as u32;
            self.filled += take;
            left -= take;
            if self.filled == 8 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.filled = 0;
            }
        }
    }

    fn finish(self) {
        if self.filled > 0 {
            self.out.push((self.acc << (8 - self.filled)) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(points: &[Point]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_series(points, &mut out);
        out
    }

    fn bits_of(points: &[Point]) -> Vec<(i64, u64)> {
        points.iter().map(|p| (p.ts_ns, p.value.to_bits())).collect()
    }

    /// Encodes, decodes, and checks every timestamp and every value bit; returns the encoding.
    fn round_trip(points: &[Point]) -> Vec<u8> {
        let bytes = encode(points);
        let (decoded, used) = decode_series(&bytes).unwrap_or_else(|e| panic!("{e} decoding {points:?}"));
        assert_eq!(used, bytes.len());
        assert_eq!(bits_of(&decoded), bits_of(points));
        bytes
    }

    fn series(ts: impl IntoIterator<Item = i64>, values: impl IntoIterator<Item = f64>) -> Vec<Point> {
        ts.into_iter().zip(values).map(|(ts_ns, value)| Point { ts_ns, value }).collect()
    }

    /// xorshift64: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in `-span..=span`.
        fn within(&mut self, span: i64) -> i64 {
            (self.next() % (2 * span as u64 + 1)) as i64 - span
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    const T0: i64 = 1_700_000_000_000_000_000;
    const SECOND: i64 = 1_000_000_000;

    /// 1 Hz sampling, each timestamp off by up to ±50 µs; `resolution_ns` is what the clock
    /// counts in (1 for the gateway's receive time, 1000 for a device clock in µs).
    fn jittered(rng: &mut Rng, n: usize, resolution_ns: i64) -> Vec<i64> {
        (0..n as i64).map(|i| T0 + i * SECOND + rng.within(50_000 / resolution_ns) * resolution_ns).collect()
    }

    /// A temperature drifting by 0.00 or ±0.01 °C a sample, rounded to 2 decimals the usual way.
    fn temperature_walk(rng: &mut Rng, n: usize) -> Vec<f64> {
        let mut t = 21.37;
        (0..n)
            .map(|_| {
                t += rng.within(1) as f64 * 0.01;
                t = (t * 100.0).round() / 100.0;
                t
            })
            .collect()
    }

    fn bytes_per_point(points: &[Point]) -> f64 {
        round_trip(points).len() as f64 / points.len() as f64
    }

    #[test]
    fn empty_series_is_one_byte() {
        assert_eq!(round_trip(&[]), [0]);
        assert_eq!(decode_series(&[0, 0xff]), Ok((Vec::new(), 1)));
    }

    #[test]
    fn single_points_round_trip() {
        for value in [0.0, -0.0, 21.37, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE / 3.0, -1e300] {
            for ts in [0, -1, T0, i64::MIN, i64::MAX] {
                round_trip(&[Point { ts_ns: ts, value }]);
            }
        }
        // A short decimal needs a varint, not 8 bytes of float.
        assert!(round_trip(&[Point { ts_ns: 0, value: 21.37 }]).len() < 1 + 1 + 1 + 8);
    }

    #[test]
    fn a_constant_regular_series_costs_about_two_bits_a_point() {
        let points = series((0..1_000).map(|i| T0 + i * SECOND), core::iter::repeat(42.5));
        let bytes = round_trip(&points);
        assert!(bytes.len() < 1_000 * 2 / 8 + 40, "{} bytes", bytes.len());
        let nan = series((0..100).map(|i| i * 10), core::iter::repeat(f64::from_bits(0x7ff8_dead_beef_0001)));
        round_trip(&nan);
    }

    #[test]
    fn jittered_timestamps_round_trip_and_their_resolution_is_divided_out() {
        let mut rng = Rng(7);
        let values = core::iter::repeat(1.0);
        let ns = round_trip(&series(jittered(&mut rng, 2_000, 1), values.clone())).len();
        let us = round_trip(&series(jittered(&mut rng, 2_000, 1_000), values.clone())).len();
        // ±50 µs in ns is about 17 bits of noise a point, in µs about 7.
        assert!(ns < 2_000 * 22 / 8, "{ns} bytes");
        assert!(us < 2_000 * 12 / 8, "{us} bytes");
        let irregular: Vec<i64> = (0..500).map(|i| T0 + i * i * 1_000 + rng.within(1 << 40)).collect();
        round_trip(&series(irregular, values));
    }

    #[test]
    fn decimal_random_walks_round_trip_in_few_bits() {
        let mut rng = Rng(11);
        let points = series((0..1_000).map(|i| T0 + i * SECOND), temperature_walk(&mut rng, 1_000));
        let bytes = round_trip(&points);
        // Values alone: about 3 bits a point.
        assert!(bytes.len() < 1_000 * 5 / 8, "{} bytes", bytes.len());
        // Negative values, other resolutions (a DS18B20 counts in 0.0625 °C) and large integers.
        let ds18b20 = series(0..300, (0..300).map(|i| (i % 40 - 20) as f64 * 0.0625));
        round_trip(&ds18b20);
        let big = series(0..50, (0..50).map(|i| (1i64 << 52) as f64 + i as f64));
        round_trip(&big);
        let mixed = series(0..6, [0.1, 0.25, -3.0, 1e-6, 123456.789012, -0.5]);
        round_trip(&mixed);
    }

    #[test]
    fn every_f64_bit_pattern_round_trips() {
        let mut rng = Rng(3);
        let special = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::from_bits(0xfff8_0000_0000_ffff),
            f64::from_bits(1),
            f64::from_bits(0x800f_ffff_ffff_ffff),
            f64::MIN,
            f64::MAX,
            f64::EPSILON,
        ];
        let mut values: Vec<f64> = special.to_vec();
        values.extend((0..2_000).map(|_| f64::from_bits(rng.next())));
        values.extend(special);
        round_trip(&series(0.., values.clone()));
        // -0.0 among decimals must not be read back as 0.0.
        round_trip(&series(0.., [1.5, -0.0, 2.25, 0.0]));
        values.reverse();
        round_trip(&series((0..).map(|i| i * 3), values));
    }

    #[test]
    fn timestamp_extremes_wrap_and_still_round_trip() {
        let ts = [i64::MIN, i64::MAX, i64::MIN, 0, i64::MAX, i64::MAX, i64::MIN + 1, -1, 1, i64::MIN];
        round_trip(&series(ts, core::iter::repeat(0.5)));
        round_trip(&series(ts.iter().rev().copied(), (0..).map(f64::from)));
        let mut rng = Rng(5);
        round_trip(&series((0..500).map(|_| rng.next() as i64), (0..).map(f64::from)));
    }

    #[test]
    fn decreasing_timestamps_round_trip() {
        round_trip(&series((0..300).map(|i| T0 - i * SECOND), (0..).map(f64::from)));
        round_trip(&series((0..300).map(|i| 1_000 - i * i), core::iter::repeat(-7.25)));
    }

    #[test]
    fn series_concatenate() {
        let a = series([T0, T0 + 1], [1.0, 2.0]);
        let b = series([5], [f64::NAN]);
        let mut bytes = encode(&a);
        encode_series(&b, &mut bytes);
        encode_series(&[], &mut bytes);
        let (got_a, used_a) = decode_series(&bytes).unwrap();
        let (got_b, used_b) = decode_series(&bytes[used_a..]).unwrap();
        let (got_c, used_c) = decode_series(&bytes[used_a + used_b..]).unwrap();
        assert_eq!((bits_of(&got_a), bits_of(&got_b), got_c.len()), (bits_of(&a), bits_of(&b), 0));
        assert_eq!(used_a + used_b + used_c, bytes.len());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut rng = Rng(9);
        let cases = [
            Vec::new(),
            series([T0], [21.5]),
            series([T0], [f64::NAN]),
            series(jittered(&mut rng, 200, 1), temperature_walk(&mut rng, 200)),
            (0..200).map(|_| Point { ts_ns: rng.next() as i64, value: f64::from_bits(rng.next()) }).collect(),
            series((0..100).map(|i| i * 10), core::iter::repeat(3.0)),
        ];
        for points in cases {
            let bytes = round_trip(&points);
            for cut in 0..bytes.len() {
                let got = decode_series(&bytes[..cut]);
                assert!(matches!(got, Err(CodecError::Truncated { .. })), "cut at {cut}/{}: {got:?}", bytes.len());
            }
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let err = |bytes: &[u8]| decode_series(bytes).unwrap_err();
        assert_eq!(err(&[]), CodecError::Truncated { what: "point count", at: 0 });
        assert_eq!(err(&[0xff; 11]), CodecError::VarintOverflow { what: "point count", at: 0 });
        assert_eq!(err(&[1, 0, 0x20]), CodecError::ValueKind { kind: 0x20, at: 2 });
        assert_eq!(err(&[1, 0, 0x17, 0]), CodecError::ValueKind { kind: 0x17, at: 2 });
        assert_eq!(err(&[2, 0, 3]), CodecError::Predictor { what: "timestamp predictor", found: 3, at: 2 });
        assert_eq!(err(&[2, 0, 0, 0]), CodecError::ZeroDivisor { what: "timestamp divisor", at: 3 });
        assert_eq!(
            err(&[2, 0, 0, 1, 0, 65, 0, 0]),
            CodecError::Width { what: "timestamp class widths", width: 65, at: 4 }
        );
        // Timestamps 0, 0 (one '0' bit), float 0.0, then a new window of 63 leading zeros and 2 bits.
        let mut window = vec![2, 0, 0, 1, 0, 0, 0, 0, 0x00, FLOAT_KIND];
        window.extend(0f64.to_le_bytes());
        window.extend([0b1111_1111, 0b0000_0100]);
        assert_eq!(err(&window), CodecError::FloatWindow { leading: 63, len: 2, at: 18 });
        let message = err(&[2, 0, 0, 0]).to_string();
        assert_eq!(message, "timestamp divisor at byte 3 is zero");
    }

    #[test]
    fn a_forged_count_neither_allocates_nor_loops_beyond_the_input() {
        let mut bytes = vec![];
        put_varint(&mut bytes, u64::MAX >> 1);
        // First timestamp 0, predictor 0, divisor 1, all widths 0: every zero bit is one more point.
        bytes.extend([0, 0, 1, 0, 0, 0, 0]);
        bytes.extend([0u8; 64]);
        assert!(matches!(decode_series(&bytes), Err(CodecError::Truncated { what: "timestamp bits", .. })));
    }

    /// Issue 5's budget is 3 bytes a reading, where line protocol spends about 50.
    #[test]
    fn a_slowly_varying_sensor_costs_at_most_three_bytes_a_point() {
        const N: usize = 10_000;
        let mut rng = Rng(0x5eed);
        let temps = temperature_walk(&mut rng, N);

        let gateway_stamped = series(jittered(&mut rng, N, 1), temps.clone());
        let temp_ns = bytes_per_point(&gateway_stamped);
        let device_stamped = series(jittered(&mut rng, N, 1_000), temps.clone());
        let temp_us = bytes_per_point(&device_stamped);
        let periodic = series((0..N as i64).map(|i| T0 + i * SECOND), temps.clone());
        let temp_periodic = bytes_per_point(&periodic);
        let ts_only = bytes_per_point(&series(jittered(&mut rng, N, 1), core::iter::repeat(0.0)));

        // 1 kHz accelerometer: a 50 Hz sine at full precision plus noise, hardware-timed.
        let vibration = series(
            (0..N as i64).map(|i| T0 + i * 1_000_000),
            (0..N).map(|i| 0.8 * (i as f64 * 0.1 * core::f64::consts::PI).sin() + 0.05 * (rng.unit() - 0.5)),
        );
        let vib = bytes_per_point(&vibration);
        // An energy-meter pulse counter read every second.
        let mut total = 1_234_567.0;
        let counter = series(
            jittered(&mut rng, N, 1),
            (0..N).map(|_| {
                total += (rng.next() % 21) as f64;
                total
            }),
        );
        let count = bytes_per_point(&counter);

        eprintln!("codec bytes/point over {N} points:");
        eprintln!("  temperature, 0.01 °C walk, 1 s ±50 µs, ns stamps (gateway): {temp_ns:.3}");
        eprintln!("  temperature, 0.01 °C walk, 1 s ±50 µs, µs stamps (device):  {temp_us:.3}");
        eprintln!("  temperature, 0.01 °C walk, exact 1 s period:                {temp_periodic:.3}");
        eprintln!("  timestamps alone, 1 s ±50 µs, ns (constant value):           {ts_only:.3}");
        eprintln!("  vibration, full-precision sine + noise, exact 1 ms period:  {vib:.3}");
        eprintln!("  counter, +0..=20 a reading, 1 s ±50 µs, ns stamps:          {count:.3}");
        assert!(temp_ns <= 3.0, "{temp_ns} bytes/point");
        assert!(temp_us <= 1.5 && temp_periodic <= 0.5, "{temp_us} / {temp_periodic} bytes/point");
    }

    proptest::proptest! {
        /// Any timestamps and any value bit patterns come back exactly.
        #[test]
        fn arbitrary_points_round_trip(raw in proptest::collection::vec((proptest::num::i64::ANY, proptest::num::u64::ANY), 0..200)) {
            let points: Vec<Point> = raw.iter().map(|&(ts_ns, v)| Point { ts_ns, value: f64::from_bits(v) }).collect();
            let mut bytes = encode(&points);
            let len = bytes.len();
            bytes.push(0xa5);
            let (decoded, used) = decode_series(&bytes).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(used, len);
            proptest::prop_assert_eq!(bits_of(&decoded), raw);
        }

        /// Sensor-like series (near-periodic timestamps, short decimals) come back exactly.
        #[test]
        fn sensor_like_series_round_trip(
            start in proptest::num::i64::ANY,
            period in 0i64..10_000_000_000,
            steps in proptest::collection::vec((-100_000i64..100_000, -3i64..=3), 1..300),
            first in -1_000_000i64..1_000_000,
            decimals in 0usize..=6,
        ) {
            let mut ts = start;
            let mut k = first;
            let points: Vec<Point> = steps.iter().map(|&(jitter, dk)| {
                ts = ts.wrapping_add(period).wrapping_add(jitter);
                k += dk;
                Point { ts_ns: ts, value: k as f64 / POW10[decimals] }
            }).collect();
            let bytes = encode(&points);
            let (decoded, used) = decode_series(&bytes).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(bits_of(&decoded), bits_of(&points));
        }

        /// Whatever the bytes, decoding returns; what it claims to have used is within the input.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Ok((_, used)) = decode_series(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }

        /// Valid encodings with one byte changed reach deep into the decoder: still no panic.
        #[test]
        fn decoding_corrupted_encodings_never_panics(
            raw in proptest::collection::vec((0i64..1_000, -50i64..50), 1..100),
            at in proptest::num::usize::ANY,
            xor in 1u8..=255,
        ) {
            let points: Vec<Point> = raw.iter().map(|&(t, k)| Point { ts_ns: t * 1_000, value: k as f64 / 10.0 }).collect();
            let mut bytes = encode(&points);
            let i = at % bytes.len();
            bytes[i] ^= xor;
            if let Ok((_, used)) = decode_series(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }
    }
}
