//! Decimal formatting of integers into a stack buffer, for numbers written
//! into HTTP heads on every request (`Content-Length` towards a target, the
//! `RateLimit` header): no allocation and two digits per division.

/// The decimal digits of a `u64` (at most 20).
pub struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    /// Formats `n`.
    pub fn new(mut n: u64) -> Decimal {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut out = Decimal {
            buf: [0; 20],
            start: 20,
        };
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            out.start -= 2;
            out.buf[out.start..out.start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            out.start -= 2;
            out.buf[out.start..out.start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            out.start -= 1;
            out.buf[out.start] = b'0' + n as u8;
        }
        out
    }

    /// The digits, most significant first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn matches_std_formatting() {
        let mut values = vec![
            0,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            u64::MAX - 1,
            u64::MAX,
        ];
        values.extend((0..20).map(|i| 10u64.pow(i)));
        values.extend((1..20).map(|i| 10u64.pow(i) - 1));
        for n in values {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes(), "{n}");
        }
    }
}
