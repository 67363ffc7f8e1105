//! `INCRBYFLOAT`'s arithmetic, exactly as Redis does it: the x87 80-bit `long double` of
//! the machines Redis runs on (a 64-bit significand), read as glibc's `strtold` reads
//! text, added with round-to-nearest-even, and written as `printf("%.17Lf")` with the
//! trailing zeros removed.
//!
//! Doing the sum in `f64` would answer other digits than Redis (`0.1` + `0.2` is
//! `0.30000000000000004` in `f64`, `0.3` in Redis), so the 80-bit format is emulated in
//! software: text is converted with exact big-integer arithmetic and rounded once, as
//! glibc does, and printing expands the binary value exactly before rounding it to 17
//! decimals. Values are small (at most [`MAX_LEN`] bytes of text), so the big integers
//! stay under a few thousand 32-bit limbs.

use std::cmp::Ordering;
use std::fmt::Write as _;

/// Redis's `MAX_LONG_DOUBLE_CHARS`: text this long or longer is not a number.
pub const MAX_LEN: usize = 5 * 1024;

/// Bits of the significand (the integer bit is explicit in the x87 format).
const SIG_BITS: u32 = 64;
/// Exponent of the least significant bit of the smallest subnormal: 2^-16445.
const MIN_EXP: i64 = -16445;
/// Exponent of the least significant bit of the largest finite value: (2^64-1) * 2^16320.
const MAX_EXP: i64 = 16320;

/// A `long double`: finite, or an infinity (`strtold` reads `inf`, but no sum with it is
/// finite, so its sign never matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongDouble(Repr);

/// `(-1)^neg * sig * 2^exp`, with `sig` normalised (its top bit set) unless `exp` is
/// [`MIN_EXP`] (a subnormal or zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    Finite { neg: bool, sig: u64, exp: i64 },
    Infinite,
}

/// Why a text is not a `long double` for Redis (`value is not a valid float`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAFloat;

/// Why a sum has no `long double` result (`increment would produce NaN or Infinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFinite;

impl LongDouble {
    /// Zero.
    pub const ZERO: Self = Self(Repr::Finite {
        neg: false,
        sig: 0,
        exp: MIN_EXP,
    });

    /// An infinity.
    pub const INFINITY: Self = Self(Repr::Infinite);

    /// The sign, significand and power of two of a finite value (`None` for an
    /// infinity), as [`Self::from_parts`] takes them: for sending a value elsewhere.
    pub fn to_parts(self) -> Option<(bool, u64, i64)> {
        match self.0 {
            Repr::Finite { neg, sig, exp } => Some((neg, sig, exp)),
            Repr::Infinite => None,
        }
    }

    /// The finite value `(-1)^neg * sig * 2^exp`, if the format holds it exactly as
    /// given: `sig` with its top bit set and `exp` within the format's range, or `exp`
    /// the smallest exponent (subnormals and zero).
    pub fn from_parts(neg: bool, sig: u64, exp: i64) -> Option<Self> {
        let normal = sig >> 63 == 1 && (MIN_EXP..=MAX_EXP).contains(&exp);
        (normal || exp == MIN_EXP).then_some(Self(Repr::Finite { neg, sig, exp }))
    }

    /// Reads `text` as Redis's `string2ld` does: `strtold` must use all of it (so a NUL
    /// byte anywhere refuses it), no leading white space, not NaN, and no overflow or
    /// underflow to zero; empty or [`MAX_LEN`] bytes and longer is refused.
    pub fn parse(text: &[u8]) -> Result<Self, NotAFloat> {
        if text.is_empty() || text.len() >= MAX_LEN || text.contains(&0) {
            return Err(NotAFloat);
        }
        if matches!(text[0], b' ' | b'\t'..=b'\r') {
            return Err(NotAFloat);
        }
        let (neg, body) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
            return Ok(Self::INFINITY);
        }
        let exact = if body.len() >= 2 && body[..2].eq_ignore_ascii_case(b"0x") {
            parse_hex(&body[2..])?
        } else {
            parse_decimal(body)?
        };
        match exact.round(neg) {
            // Overflow (HUGE_VAL) and underflow to zero set ERANGE: refused.
            Rounded::Overflow => Err(NotAFloat),
            Rounded::Value(v) if v.is_zero() && !exact.is_zero() => Err(NotAFloat),
            Rounded::Value(v) => Ok(v),
        }
    }

    /// The sum, rounded to nearest (ties to even).
    pub fn checked_add(self, other: Self) -> Result<Self, NotFinite> {
        let (
            Repr::Finite {
                neg: an,
                sig: asig,
                exp: ae,
            },
            Repr::Finite {
                neg: bn,
                sig: bsig,
                exp: be,
            },
        ) = (self.0, other.0)
        else {
            return Err(NotFinite);
        };
        // Both on the smaller exponent, as exact integers.
        let exp = ae.min(be);
        let a = Big::from_u64(asig).shl(shift(ae - exp));
        let b = Big::from_u64(bsig).shl(shift(be - exp));
        let (neg, mag) = if an == bn {
            (an, a.add(&b))
        } else {
            match a.cmp(&b) {
                Ordering::Less => (bn, b.sub(&a)),
                Ordering::Greater => (an, a.sub(&b)),
                // An exact zero sum is +0 when rounding to nearest.
                Ordering::Equal => return Ok(Self::ZERO),
            }
        };
        let sum = Exact {
            mag,
            exp,
            sticky: false,
        };
        match sum.round(neg) {
            Rounded::Overflow => Err(NotFinite),
            Rounded::Value(v) => Ok(v),
        }
    }

    fn is_zero(self) -> bool {
        matches!(self.0, Repr::Finite { sig: 0, .. })
    }

    /// `printf("%.17Lf")` with the trailing zeros (and a bare point) removed, and `-0`
    /// written `0`: Redis's `ld2string` in its human mode. `None` for an infinity.
    pub fn to_redis_string(self) -> Option<String> {
        let Repr::Finite { neg, sig, exp } = self.0 else {
            return None;
        };
        // The value times 10^17, rounded to an integer (ties to even).
        let scaled = Big::from_u64(sig).mul_pow10(17);
        let digits = if exp >= 0 {
            scaled.shl(shift(exp))
        } else {
            let drop = shift(-exp);
            let mut q = scaled.shr(drop);
            let half = scaled.bit(drop - 1);
            let rest = scaled.any_below(drop - 1);
            if half && (rest || q.bit(0)) {
                q = q.add(&Big::from_u64(1));
            }
            q
        };
        let mut text = digits.to_decimal();
        if text.len() < 18 {
            text.insert_str(0, &"0".repeat(18 - text.len()));
        }
        text.insert(text.len() - 17, '.');
        let trimmed = text.trim_end_matches('0').trim_end_matches('.');
        Some(match (neg, trimmed) {
            (true, "0") | (false, _) => trimmed.to_owned(),
            (true, _) => format!("-{trimmed}"),
        })
    }
}

/// A shift count from an exponent difference that the formats keep within `u32`.
fn shift(bits: i64) -> u32 {
    u32::try_from(bits).unwrap_or(u32::MAX)
}

/// An exact non-negative value `mag * 2^exp`, plus whether a nonzero remainder below its
/// last bit was cut off (`sticky`).
struct Exact {
    mag: Big,
    exp: i64,
    sticky: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Rounded {
    Value(LongDouble),
    Overflow,
}

impl Exact {
    fn is_zero(&self) -> bool {
        self.mag.is_zero() && !self.sticky
    }

    /// Rounds to the nearest `long double` (ties to even), with subnormals.
    fn round(&self, neg: bool) -> Rounded {
        if self.mag.is_zero() {
            // A cut-off remainder with no bits above it is below half the smallest
            // subnormal (the callers keep enough bits): it rounds to zero.
            return Rounded::Value(LongDouble(Repr::Finite {
                neg,
                sig: 0,
                exp: MIN_EXP,
            }));
        }
        let len = i64::from(self.mag.bit_len());
        let mut exp = (self.exp + len - i64::from(SIG_BITS)).max(MIN_EXP);
        let mut sig;
        if exp <= self.exp {
            // Every bit fits: exact.
            sig = self.mag.shl(shift(self.exp - exp)).low_u64();
        } else {
            let drop = shift(exp - self.exp);
            sig = self.mag.shr(drop).low_u64();
            let half = self.mag.bit(drop - 1);
            let rest = self.sticky || self.mag.any_below(drop - 1);
            if half && (rest || sig & 1 == 1) {
                match sig.checked_add(1) {
                    Some(s) => sig = s,
                    None => {
                        sig = 1 << 63;
                        exp += 1;
                    }
                }
            }
        }
        if exp > MAX_EXP {
            return Rounded::Overflow;
        }
        Rounded::Value(LongDouble(Repr::Finite { neg, sig, exp }))
    }
}

/// A number's text taken apart: its digits without leading zeros (empty for zero), and
/// the power of the base (10 or 16) of the last digit's place, plus the explicit
/// exponent (of 10 or of 2).
struct Digits {
    digits: Vec<u8>,
    frac_len: i64,
    exponent: i64,
}

impl Digits {
    /// `[digits][.digits][<mark>[+-]digits]` with at least one digit, as `strtold`
    /// reads it: decimal with `e`, hexadecimal (after `0x`) with `p`.
    fn split(body: &[u8], hex: bool) -> Result<Self, NotAFloat> {
        let mark = if hex { b'p' } else { b'e' };
        let (mantissa, exponent) = match body.iter().position(|b| b.to_ascii_lowercase() == mark) {
            Some(at) => (&body[..at], Some(&body[at + 1..])),
            None => (body, None),
        };
        let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, &[][..]),
        };
        let digit = if hex {
            u8::is_ascii_hexdigit
        } else {
            u8::is_ascii_digit
        };
        if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(digit) {
            return Err(NotAFloat);
        }
        Ok(Self {
            digits: int
                .iter()
                .chain(frac)
                .copied()
                .skip_while(|&d| d == b'0')
                .collect(),
            frac_len: i64::try_from(frac.len()).unwrap_or(i64::MAX),
            exponent: exponent.map_or(Ok(0), signed_exponent)?,
        })
    }
}

impl Exact {
    fn zero() -> Self {
        Self {
            mag: Big::default(),
            exp: 0,
            sticky: false,
        }
    }

    /// Beyond the largest finite value: rounds to overflow.
    fn huge() -> Self {
        Self {
            mag: Big::from_u64(1),
            exp: MAX_EXP + 128,
            sticky: false,
        }
    }

    /// Nonzero but below half the smallest subnormal: rounds to zero (an underflow).
    fn tiny() -> Self {
        Self {
            mag: Big::default(),
            exp: MIN_EXP,
            sticky: true,
        }
    }
}

/// Decimal text; the exact value, to be rounded once.
fn parse_decimal(body: &[u8]) -> Result<Exact, NotAFloat> {
    let Digits {
        digits,
        frac_len,
        exponent,
    } = Digits::split(body, false)?;
    let exp10 = exponent.saturating_sub(frac_len);
    if digits.is_empty() {
        return Ok(Exact::zero());
    }
    let n = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // 10^(n-1+exp10) <= value < 10^(n+exp10). The largest finite value is about
    // 1.19e4932 and half the smallest subnormal about 1.8e-4951.
    if n - 1 + exp10 >= 4933 {
        return Ok(Exact::huge());
    }
    if n + exp10 < -4952 {
        return Ok(Exact::tiny());
    }
    if digits.len() > EXACT_DIGITS {
        // Long text: the leading digits decide the rounding unless the value lies within
        // one unit of their last place of a rounding boundary. `head` and `head + 1`
        // (in that place) bound the value; a rest that is not all zeros puts it strictly
        // between them, and if both bounds, each nudged up, round alike, so does the value.
        let (head, rest) = digits.split_at(EXACT_DIGITS);
        let exp10 = exp10.saturating_add(i64::try_from(rest.len()).unwrap_or(i64::MAX));
        let low = Big::from_decimal(head);
        if rest.iter().all(|&d| d == b'0') {
            return Ok(scaled(low, exp10));
        }
        let mut high = low.clone();
        high.mul_add_small(1, 1);
        let mut below = scaled(low, exp10);
        below.sticky = true;
        let mut above = scaled(high, exp10);
        above.sticky = true;
        if below.round(false) == above.round(false) {
            return Ok(below);
        }
    }
    Ok(scaled(Big::from_decimal(&digits), exp10))
}

/// Significant decimal digits converted exactly before the rest is only known to be
/// there (see [`parse_decimal`]): far more than a 64-bit significand needs, so that a
/// long text takes the exact path only when it is that close to a rounding boundary.
const EXACT_DIGITS: usize = 60;

/// `d * 10^exp10` exactly: the value itself for `exp10 >= 0`, else a quotient of 66 to 67
/// bits and whether a remainder is left, which is all the rounding needs.
fn scaled(d: Big, exp10: i64) -> Exact {
    if exp10 >= 0 {
        return Exact {
            mag: d.mul_pow10(shift(exp10)),
            exp: 0,
            sticky: false,
        };
    }
    // One side is scaled by a power of two for that quotient: value =
    // (d * 2^t / divisor) * 2^-t, or (d / (divisor * 2^-t)) * 2^-t.
    let divisor = Big::from_u64(1).mul_pow10(shift(-exp10));
    let t = 66 + i64::from(divisor.bit_len()) - i64::from(d.bit_len());
    let (mut rem, divisor) = if t >= 0 {
        (d.shl(shift(t)), divisor)
    } else {
        (d, divisor.shl(shift(-t)))
    };
    // Long division, one quotient bit a step, in place (the operands may be thousands of
    // limbs long).
    let mut q: u128 = 0;
    let mut step = divisor.shl(67);
    for i in (0..68u32).rev() {
        if rem.cmp(&step) != Ordering::Less {
            rem.sub_assign(&step);
            q |= 1 << i;
        }
        step.halve();
    }
    Exact {
        mag: Big::from_u128(q),
        exp: -t,
        sticky: !rem.is_zero(),
    }
}

/// Hexadecimal text after `0x` (text like `0x` alone or `0xp1` is `0` followed by junk
/// for `strtold`: refused); the exact value.
fn parse_hex(body: &[u8]) -> Result<Exact, NotAFloat> {
    let Digits {
        digits,
        frac_len,
        exponent,
    } = Digits::split(body, true)?;
    let exp = exponent.saturating_sub(frac_len.saturating_mul(4));
    let Some(&top) = digits.first() else {
        return Ok(Exact::zero());
    };
    // The bit length from the digits alone: far outside the range either way, the
    // number is not built.
    let top_bits = 4 - i64::from(hex_value(top).leading_zeros() - 28);
    let len = i64::try_from(digits.len() - 1)
        .unwrap_or(i64::MAX)
        .saturating_mul(4)
        .saturating_add(top_bits);
    if exp.saturating_add(len) > MAX_EXP + 128 {
        return Ok(Exact::huge());
    }
    if exp.saturating_add(len) < MIN_EXP - 2 {
        return Ok(Exact::tiny());
    }
    Ok(Exact {
        mag: Big::from_hex(&digits),
        exp,
        sticky: false,
    })
}

/// The value of an ASCII hexadecimal digit.
fn hex_value(h: u8) -> u32 {
    char::from(h).to_digit(16).unwrap_or(0)
}

/// An exponent's `[+-]digits`, saturated far beyond any finite value's range.
fn signed_exponent(e: &[u8]) -> Result<i64, NotAFloat> {
    let (neg, digits) = match e.first() {
        Some(b'-') => (true, &e[1..]),
        Some(b'+') => (false, &e[1..]),
        _ => (false, e),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(NotAFloat);
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = (v * 10 + i64::from(d - b'0')).min(1_000_000_000);
    }
    Ok(if neg { -v } else { v })
}

/// The low 32 bits (limb arithmetic carries the rest separately).
fn low32(v: u64) -> u32 {
    u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX)
}

/// A non-negative big integer: 32-bit limbs, least significant first, no zero limbs on
/// top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn from_u64(v: u64) -> Self {
        Self::from_u128(u128::from(v))
    }

    fn from_u128(mut v: u128) -> Self {
        let mut limbs = Vec::new();
        while v != 0 {
            limbs.push(low32(u64::try_from(v & u128::from(u32::MAX)).unwrap_or(0)));
            v >>= 32;
        }
        Self(limbs)
    }

    /// From ASCII hexadecimal digits, most significant first: eight to a limb, in
    /// linear time.
    fn from_hex(digits: &[u8]) -> Self {
        let limbs = digits
            .rchunks(8)
            .map(|chunk| chunk.iter().fold(0u32, |v, &h| (v << 4) | hex_value(h)))
            .collect();
        Self(limbs).trim()
    }

    /// From ASCII decimal digits.
    fn from_decimal(digits: &[u8]) -> Self {
        let mut n = Self::default();
        for chunk in digits.chunks(9) {
            let mut v = 0u32;
            for &d in chunk {
                v = v * 10 + u32::from(d - b'0');
            }
            let scale = 10u32.pow(u32::try_from(chunk.len()).unwrap_or(9));
            n.mul_add_small(scale, v);
        }
        n
    }

    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn trim(mut self) -> Self {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }

    fn bit_len(&self) -> u32 {
        match self.0.last() {
            None => 0,
            Some(&top) => {
                u32::try_from(self.0.len() - 1).unwrap_or(u32::MAX) * 32
                    + (32 - top.leading_zeros())
            }
        }
    }

    fn low_u64(&self) -> u64 {
        let limb = |i: usize| u64::from(self.0.get(i).copied().unwrap_or(0));
        limb(0) | (limb(1) << 32)
    }

    fn bit(&self, i: u32) -> bool {
        let limb = (i / 32) as usize;
        self.0.get(limb).is_some_and(|l| (l >> (i % 32)) & 1 == 1)
    }

    /// Whether any bit below bit `i` is set.
    fn any_below(&self, i: u32) -> bool {
        let whole = (i / 32) as usize;
        if self.0.iter().take(whole).any(|&l| l != 0) {
            return true;
        }
        let part = i % 32;
        part != 0
            && self
                .0
                .get(whole)
                .is_some_and(|&l| l & ((1 << part) - 1) != 0)
    }

    /// `self * mul + add`, in place.
    fn mul_add_small(&mut self, mul: u32, add: u32) {
        let mut carry = u64::from(add);
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(mul) + carry;
            *limb = low32(v);
            carry = v >> 32;
        }
        if carry != 0 {
            self.0.push(low32(carry));
        }
        if self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn mul_pow10(mut self, mut k: u32) -> Self {
        while k >= 9 {
            self.mul_add_small(1_000_000_000, 0);
            k -= 9;
        }
        self.mul_add_small(10u32.pow(k), 0);
        self
    }

    fn shl(&self, bits: u32) -> Self {
        if self.is_zero() {
            return Self::default();
        }
        let limbs = (bits / 32) as usize;
        let part = bits % 32;
        let mut out = vec![0u32; limbs];
        out.reserve(self.0.len() + 1);
        let mut carry = 0u32;
        for &l in &self.0 {
            if part == 0 {
                out.push(l);
            } else {
                out.push((l << part) | carry);
                carry = l >> (32 - part);
            }
        }
        if carry != 0 {
            out.push(carry);
        }
        Self(out)
    }

    fn shr(&self, bits: u32) -> Self {
        let limbs = (bits / 32) as usize;
        let part = bits % 32;
        if limbs >= self.0.len() {
            return Self::default();
        }
        let src = &self.0[limbs..];
        let out = (0..src.len())
            .map(|i| {
                let low = src[i] >> part;
                let high = if part == 0 {
                    0
                } else {
                    src.get(i + 1).map_or(0, |&h| h << (32 - part))
                };
                low | high
            })
            .collect();
        Self(out).trim()
    }

    fn add(&self, other: &Self) -> Self {
        let (long, short) = if self.0.len() >= other.0.len() {
            (self, other)
        } else {
            (other, self)
        };
        let mut out = Vec::with_capacity(long.0.len() + 1);
        let mut carry = 0u64;
        for (i, &l) in long.0.iter().enumerate() {
            let v = u64::from(l) + u64::from(short.0.get(i).copied().unwrap_or(0)) + carry;
            out.push(low32(v));
            carry = v >> 32;
        }
        if carry != 0 {
            out.push(low32(carry));
        }
        Self(out)
    }

    /// `self - other`, for `self >= other`.
    fn sub(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.sub_assign(other);
        out
    }

    /// `self -= other`, for `self >= other`.
    fn sub_assign(&mut self, other: &Self) {
        let mut borrow = false;
        for (i, l) in self.0.iter_mut().enumerate() {
            let (v, b1) = l.overflowing_sub(other.0.get(i).copied().unwrap_or(0));
            let (v, b2) = v.overflowing_sub(u32::from(borrow));
            borrow = b1 || b2;
            *l = v;
        }
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    /// `self >>= 1`.
    fn halve(&mut self) {
        let mut high = 0u32;
        for l in self.0.iter_mut().rev() {
            let low = *l & 1;
            *l = (*l >> 1) | (high << 31);
            high = low;
        }
        if self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }

    /// Decimal digits ("0" for zero).
    fn to_decimal(&self) -> String {
        let mut n = self.0.clone();
        let mut chunks = Vec::new();
        while !n.is_empty() {
            let mut rem = 0u64;
            for limb in n.iter_mut().rev() {
                let v = (rem << 32) | u64::from(*limb);
                // rem < 10^9, so the quotient fits 32 bits.
                *limb = low32(v / 1_000_000_000);
                rem = v % 1_000_000_000;
            }
            while n.last() == Some(&0) {
                n.pop();
            }
            chunks.push(low32(rem));
        }
        let Some((top, rest)) = chunks.split_last() else {
            return "0".to_owned();
        };
        let mut s = top.to_string();
        for c in rest.iter().rev() {
            // Writing into a String cannot fail.
            let _ = write!(s, "{c:09}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SET k value; INCRBYFLOAT k increment` as this module computes it: the new value,
    /// or Redis's error reply.
    fn incrbyfloat(value: &[u8], increment: &[u8]) -> String {
        let (Ok(v), Ok(i)) = (LongDouble::parse(value), LongDouble::parse(increment)) else {
            return "-ERR value is not a valid float".to_owned();
        };
        match v.checked_add(i).ok().and_then(LongDouble::to_redis_string) {
            Some(s) => s,
            None => "-ERR increment would produce NaN or Infinity".to_owned(),
        }
    }

    /// Replies recorded from redis-server 7.0.15 (x86-64, glibc): ordinary sums, the
    /// cases `f64` gets wrong, the limits of the format (largest value, subnormals, the
    /// tie at half the smallest), hexadecimal and infinite input, and text `strtold`
    /// refuses or reads only in part.
    #[test]
    fn matches_redis() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("testdata/incrbyfloat.json")).expect("json");
        let cases = data["cases"].as_array().expect("cases");
        assert!(cases.len() > 80);
        for case in cases {
            let [value, increment, want] = [0, 1, 2].map(|i| case[i].as_str().expect("text"));
            assert_eq!(
                incrbyfloat(value.as_bytes(), increment.as_bytes()),
                want,
                "{value:?} + {increment:?}"
            );
        }
        // Ten increments of 0.1 from 0, each on the stored text, as a counter does.
        let mut value = "0".to_owned();
        for want in data["tenths"].as_array().expect("tenths") {
            value = incrbyfloat(value.as_bytes(), b"0.1");
            assert_eq!(value, want.as_str().expect("text"));
        }
    }

    #[test]
    fn text_limits_and_nul() {
        // strtold stops at a NUL, so it has not read the whole text: refused.
        for nul in [&b"1.5\0junk"[..], b"\0", b"\x001", b"1\0", b"0x1\0"] {
            assert_eq!(
                incrbyfloat(nul, b"1"),
                "-ERR value is not a valid float",
                "{nul:?}"
            );
            assert_eq!(incrbyfloat(b"1", nul), "-ERR value is not a valid float");
        }
        assert_eq!(incrbyfloat(b"", b"1"), "-ERR value is not a valid float");
        let long = format!("1.{}", "0".repeat(MAX_LEN - 3));
        assert_eq!(long.len(), MAX_LEN - 1);
        assert_eq!(incrbyfloat(long.as_bytes(), b"1"), "2");
        let longer = format!("{long}0");
        assert_eq!(
            incrbyfloat(longer.as_bytes(), b"1"),
            "-ERR value is not a valid float"
        );
    }

    /// Long hexadecimal text is read digit by digit into limbs (linear time) after a
    /// range check from its length alone.
    #[test]
    fn long_hexadecimal_text() {
        let all_f = format!("0x{}", "f".repeat(MAX_LEN - 3));
        assert_eq!(
            incrbyfloat(all_f.as_bytes(), b"1"),
            "-ERR value is not a valid float"
        );
        let zeros = format!("0x{}1p3", "0".repeat(MAX_LEN - 6));
        assert_eq!(incrbyfloat(zeros.as_bytes(), b"0"), "8");
        // 2^16000 * 2^-16000, and just below half the smallest subnormal.
        let one = format!("0x1{}p-16000", "0".repeat(4000));
        assert_eq!(incrbyfloat(one.as_bytes(), b"0.5"), "1.5");
        let tiny = format!("0x0.{}1p-16384", "0".repeat(16));
        assert_eq!(
            incrbyfloat(tiny.as_bytes(), b"0"),
            "-ERR value is not a valid float"
        );
    }

    /// Decimal text longer than [`EXACT_DIGITS`] at, just off and far from a rounding
    /// boundary: the leading digits alone cannot tell these apart, the exact path must.
    #[test]
    fn long_decimal_text_near_a_tie() {
        let parsed = |text: &str| LongDouble::parse(text.as_bytes()).expect("a number");
        let value = |sig: u64| LongDouble::from_parts(false, sig, 300).expect("finite");
        for sig in [
            (1u64 << 63) | 12_345_678_901_234_567,
            (1 << 63) | 12_345_678_901_234_568,
        ] {
            // Halfway between sig * 2^300 and the next value up: 110 digits.
            let mid = Big::from_u128(2 * u128::from(sig) + 1).shl(299);
            let text = mid.to_decimal();
            assert!(text.len() > EXACT_DIGITS);
            let even = if sig % 2 == 0 { sig } else { sig + 1 };
            assert_eq!(
                parsed(&text),
                value(even),
                "a tie goes to the even neighbour"
            );
            let above = mid.add(&Big::from_u64(1)).to_decimal();
            assert_eq!(parsed(&above), value(sig + 1));
            let below = mid.sub(&Big::from_u64(1)).to_decimal();
            assert_eq!(parsed(&below), value(sig));
            let barely = format!("{text}.{}1", "0".repeat(70));
            assert_eq!(parsed(&barely), value(sig + 1));
            // Far from the tie, the leading digits decide: a long tail of nines.
            let low = format!("{}.{}", below, "9".repeat(200));
            assert_eq!(parsed(&low), value(sig));
        }
        // As redis-server 7.0 prints the first tie (rounded down to the even value).
        let mid = Big::from_u128(2 * ((1 << 63) | 12_345_678_901_234_567) + 1).shl(299);
        assert_eq!(
            incrbyfloat(mid.to_decimal().as_bytes(), b"0"),
            "18813489254264754246764664017804440115987122495605790397708382850565778463394\
             188888489202078664027615187173376"
        );
    }

    #[test]
    fn largest_value_prints_every_digit() {
        let max = LongDouble::from_parts(false, u64::MAX, MAX_EXP).expect("in range");
        assert_eq!(max.to_parts(), Some((false, u64::MAX, MAX_EXP)));
        // Only normalised parts in range (or subnormal ones) make a value.
        assert_eq!(LongDouble::from_parts(false, 1 << 63, MAX_EXP + 1), None);
        assert_eq!(LongDouble::from_parts(false, 1, 0), None);
        assert!(LongDouble::from_parts(true, 5, MIN_EXP).is_some());
        let text = max.to_redis_string().expect("finite");
        assert_eq!(text.len(), 4933);
        assert!(text.starts_with("118973149535723176502"), "{text:.30}");
        assert_eq!(LongDouble::parse(text.as_bytes()), Ok(max), "read back");
        // One step past it is out of range.
        assert_eq!(
            max.checked_add(LongDouble::parse(b"0x1p16320").expect("parse")),
            Err(NotFinite)
        );
    }

    proptest::proptest! {
        /// A value with at most 3 binary fraction digits has at most 3 decimal ones, so
        /// its 17 printed decimals hold all of it: reading them back gives the value.
        #[test]
        fn print_then_parse(sig in proptest::prelude::any::<u64>(), exp in -3i64..200, neg: bool) {
            let v = LongDouble::from_parts(neg, sig | 1 << 63, exp).expect("normal");
            let text = v.to_redis_string().expect("finite");
            proptest::prop_assert_eq!(LongDouble::parse(text.as_bytes()), Ok(v));
        }

        /// Number-like text (signs, points, exponents, hex) and any bytes: an answer,
        /// never a panic; a sum of two parsed values prints or is refused.
        #[test]
        fn parse_and_add_never_panic(
            a in "[-+0-9.eExXpPa-f ]{0,30}",
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            if let (Ok(x), Ok(y)) = (LongDouble::parse(a.as_bytes()), LongDouble::parse(&b)) {
                let _ = x.checked_add(y).map(LongDouble::to_redis_string);
            }
        }
    }
}
