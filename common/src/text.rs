//! Numbers written into text on the request path without the formatter (integers by `itoa`).
//!
//! `write!` and `to_string` take `core::fmt`'s general path for every integer: about 300
//! instructions for one small number, 1,300 for an IPv4 address (callgrind). The gateway writes
//! several per proxied request (the rate-limit key, the client address, the access line).

use std::net::IpAddr;

/// Appends `n` in decimal, as `Display` writes it.
pub fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` in decimal, as `Display` writes it.
pub fn push_signed(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `value` rounded to three decimals, the trailing zeros of the fraction dropped but
/// one kept (`0.25`, `12.5`, `3.0`): a latency in milliseconds to the microsecond. Values too
/// large for that, and NaN or infinities, go through `Debug`.
pub fn push_millis(out: &mut String, value: f64) {
    use std::fmt::Write as _;
    if !(value.is_finite() && value.abs() < 1e12) {
        let _ = write!(out, "{value:?}");
        return;
    }
    let thousandths = (value.abs() * 1000.0).round() as u64;
    if value < 0.0 && thousandths != 0 {
        out.push('-');
    }
    push_decimal(out, thousandths / 1000);
    out.push('.');
    let fraction = thousandths % 1000;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let kept = match digits {
        [_, _, d] if d != 0 => 3,
        [_, d, _] if d != 0 => 2,
        _ => 1,
    };
    for &d in &digits[..kept] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// The address as `IpAddr`'s `Display` writes it; IPv4 by hand.
pub fn ip(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_decimal(&mut text, u64::from(octet));
            }
            text
        }
        IpAddr::V6(_) => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        for n in [0i64, -1, 42, i64::MIN, i64::MAX] {
            let mut s = String::new();
            push_signed(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn milliseconds_keep_three_decimals_at_most() {
        for (v, text) in [
            (0.25, "0.25"),
            (3.0, "3.0"),
            (12.5, "12.5"),
            (0.4123, "0.412"),
            (0.0004, "0.0"),
            (1.9996, "2.0"),
            (-2.5, "-2.5"),
            (-0.0001, "0.0"),
            (1234.567, "1234.567"),
        ] {
            let mut s = String::new();
            push_millis(&mut s, v);
            assert_eq!(s, text, "{v}");
        }
        let mut s = String::new();
        push_millis(&mut s, f64::NAN);
        assert_eq!(s, "NaN");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "127.0.0.1",
            "0.0.0.0",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(ip(addr), addr.to_string());
        }
    }
}
