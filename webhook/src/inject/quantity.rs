//! Kubernetes resource quantities, compared by value: "1" == "1000m", "1Gi" ==
//! "1073741824". Exact, in nano-units: no floating point.

/// A Kubernetes quantity in nano-units. Kubernetes keeps nothing finer than nano and
/// rounds finer digits up; so does this. Exact: no floating point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i128);

const SYNTAX: &str = "is not a Kubernetes quantity such as 10m, 64Mi, 0.5 or 1e3";
const RANGE: &str = "is out of range";

impl Quantity {
    /// `<sign><digits>[.<digits>]<suffix>`, the suffix one of the binary (Ki … Ei) or
    /// decimal (m, k, M … E) multipliers, or an exponent (e3, E-2).
    pub fn parse(text: &str) -> Result<Quantity, &'static str> {
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, rest) = rest.split_at(digits(rest));
        let (frac, suffix) = match rest.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", rest),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(SYNTAX);
        }
        let (pow2, pow10): (u32, i64) = match suffix {
            "" => (0, 0),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            exponent => {
                let signed = exponent.strip_prefix(['e', 'E']).ok_or(SYNTAX)?;
                let unsigned = signed.strip_prefix(['+', '-']).unwrap_or(signed);
                if unsigned.is_empty() || digits(unsigned) != unsigned.len() {
                    return Err(SYNTAX);
                }
                (0, signed.parse::<i64>().map_err(|_| RANGE)?)
            }
        };
        let frac = frac.trim_end_matches('0');
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(b - b'0')))
                .ok_or(RANGE)?;
        }
        let scaled = mantissa.checked_mul(1i128 << pow2).ok_or(RANGE)?;
        let exp10 = pow10 + 9 - frac.len() as i64;
        let nanos = if mantissa == 0 {
            0
        } else if exp10 >= 0 {
            let factor = u32::try_from(exp10)
                .ok()
                .and_then(|e| 10i128.checked_pow(e))
                .ok_or(RANGE)?;
            scaled.checked_mul(factor).ok_or(RANGE)?
        } else {
            match u32::try_from(-exp10)
                .ok()
                .and_then(|e| 10i128.checked_pow(e))
            {
                Some(divisor) => scaled.div_ceil_positive(divisor),
                // Far below a nano: rounds up to one.
                None => 1,
            }
        };
        Ok(Quantity(if negative { -nanos } else { nanos }))
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn nanos(self) -> i128 {
        self.0
    }
}

fn digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

trait DivCeil {
    fn div_ceil_positive(self, divisor: Self) -> Self;
}

impl DivCeil for i128 {
    /// Both operands are positive here.
    fn div_ceil_positive(self, divisor: i128) -> i128 {
        self / divisor + i128::from(self % divisor != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn equal_by_value_not_by_text() {
        for (a, b) in [
            ("1", "1000m"),
            ("1Gi", "1073741824"),
            ("0.5", "500m"),
            (".5", "500m"),
            ("5.", "5"),
            ("+2", "2"),
            ("1e3", "1k"),
            ("1E3", "1k"),
            ("1e+3", "1000"),
            ("2E-2", "20m"),
            ("1.5Gi", "1536Mi"),
            ("1Ki", "1024"),
            ("1Ei", "1152921504606846976"),
            ("1E", "1000000000000000000"),
            ("1M", "1000k"),
            ("100m", "0.1"),
            ("1.000", "1"),
            ("0", "0m"),
            ("1e-9", "0.000000001"),
        ] {
            assert_eq!(q(a), q(b), "{a} == {b}");
        }
        assert!(q("100m") < q("1"));
        assert!(q("64Mi") > q("64M"));
        assert!(q("1m") < q("1M"));
        assert_eq!(q("-1").0, -1_000_000_000);
    }

    #[test]
    fn below_a_nano_rounds_up_as_kubernetes_does() {
        assert_eq!(q("1e-10"), Quantity(1));
        assert_eq!(q("0.0000000001"), Quantity(1));
        assert_eq!(q("1.0000000001"), Quantity(1_000_000_001));
        assert_eq!(q("1e-400"), Quantity(1));
        assert_eq!(q("0e-400"), Quantity(0));
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "m", "Ki", "64MB", "1..2", "1.2.3", "ten", "1e", "1e+", "-", "+", ".", "1 Gi",
            " 1", "1ki", "1e1.5", "0x10", "1mi", "--1", "1Gi ",
        ] {
            assert_eq!(Quantity::parse(bad), Err(SYNTAX), "{bad:?}");
        }
        for huge in [
            "99999999999999999999999Ei",
            "1e400",
            "1e99999999999999999999",
        ] {
            assert_eq!(Quantity::parse(huge), Err(RANGE), "{huge:?}");
        }
    }
}
