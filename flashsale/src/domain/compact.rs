//! The purchase body read in one pass, for the form clients send.
//!
//! Late buyers of a sold-out item are most of a flash sale's requests, and their answer depends
//! on two numbers in the body. serde_json spent about 3,000 instructions on a 200-byte purchase
//! (callgrind), more than the rest of the handler's own work for that answer. This reader takes a
//! strict subset of JSON: an object holding the five fields once each, in any order, with any
//! JSON whitespace, integers of at most 18 digits without fraction or exponent, and strings
//! without escapes or control characters. For anything else it answers `None`, and the body goes
//! to serde_json, which gives the authoritative result: the same value, or the error the client
//! is told. Whatever it accepts, serde_json accepts with the same value; the tests check that on
//! generated and mutated bodies.

use std::borrow::Cow;

use super::Purchase;

/// The purchase in `body`, or `None` when the body is outside the subset (not necessarily
/// invalid: an escaped string, a field twice, an array form).
pub(super) fn purchase(body: &[u8]) -> Option<Purchase<'_>> {
    // Validated once for the whole body (serde_json refuses bytes that are not UTF-8 anywhere),
    // so each string is then a slice of it, cut at its quotes.
    let text = std::str::from_utf8(body).ok()?;
    let mut r = Reader {
        text,
        bytes: body,
        at: 0,
    };
    let (mut session_id, mut sku_id, mut quantity) = (None, None, None);
    let (mut token, mut request_id) = (None, None);
    r.whitespace();
    r.expect(b'{')?;
    loop {
        r.whitespace();
        let key = r.key()?;
        r.whitespace();
        r.expect(b':')?;
        r.whitespace();
        match key {
            Field::SessionId => once(&mut session_id, r.integer()?)?,
            Field::SkuId => once(&mut sku_id, r.integer()?)?,
            Field::Quantity => once(&mut quantity, r.integer()?)?,
            Field::Token => once(&mut token, r.string()?)?,
            Field::RequestId => once(&mut request_id, r.string()?)?,
        }
        r.whitespace();
        match r.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    r.whitespace();
    if r.at != body.len() {
        return None;
    }
    Some(Purchase {
        session_id: session_id?,
        sku_id: sku_id?,
        quantity: quantity?,
        token: Cow::Borrowed(token?),
        request_id: Cow::Borrowed(request_id?),
    })
}

/// Sets a field seen for the first time; a repeated one is serde_json's to refuse.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

#[derive(Clone, Copy)]
enum Field {
    SessionId,
    SkuId,
    Quantity,
    Token,
    RequestId,
}

/// The keys as they appear in the body, closing quote included.
const FIELDS: [(&[u8], Field); 5] = [
    (b"session_id\"", Field::SessionId),
    (b"sku_id\"", Field::SkuId),
    (b"quantity\"", Field::Quantity),
    (b"token\"", Field::Token),
    (b"request_id\"", Field::RequestId),
];

struct Reader<'a> {
    text: &'a str,
    /// `text`'s bytes.
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's four whitespace bytes, as serde_json skips them.
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.at += 1;
        }
    }

    /// One of the five keys. Any other key, or one written with an escape, is not taken.
    fn key(&mut self) -> Option<Field> {
        self.expect(b'"')?;
        let rest = &self.bytes[self.at..];
        let &(name, field) = FIELDS.iter().find(|(name, _)| rest.starts_with(name))?;
        self.at += name.len();
        Some(field)
    }

    /// A string without escapes or control characters (serde_json unescapes the one and refuses
    /// the other). The end is found with `memchr` and the check runs over the whole string at
    /// once: a byte-by-byte loop with three tests per byte, and a UTF-8 check per string, cost
    /// as much as serde_json did.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[len] != b'"' {
            return None;
        }
        if rest[..len].iter().fold(false, |control, &b| control | (b < 0x20)) {
            return None;
        }
        // Both ends are ASCII quotes, so this is a whole number of characters.
        let text = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(text)
    }

    /// An integer serde_json reads as an `i64`: an optional minus, no leading zero, at most 18
    /// digits (so it cannot overflow), and no fraction or exponent and not `-0` (which make it a
    /// float).
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let digits = &self.bytes[start..self.at];
        if digits.is_empty() || digits.len() > 18 || (digits[0] == b'0' && digits.len() > 1) {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let value = digits
            .iter()
            .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
        match (negative, value) {
            // serde_json reads `-0` as the float -0.0, which an integer field refuses.
            (true, 0) => None,
            (true, value) => Some(-value),
            (false, value) => Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(body: &[u8]) -> Option<Purchase<'_>> {
        serde_json::from_slice(body).ok()
    }

    /// What the reader accepts, serde_json accepts with the same value.
    fn agrees(body: &[u8]) -> bool {
        match purchase(body) {
            None => true,
            Some(fast) => serde(body).as_ref() == Some(&fast),
        }
    }

    const CLIENT: &str = r#"{"session_id":12,"sku_id":3,"quantity":1,"token":"1767225600000.9f86d081884c7d65","request_id":"late-1"}"#;

    #[test]
    fn the_form_clients_send_is_read_without_serde() {
        let fast = purchase(CLIENT.as_bytes()).expect("the compact form is in the subset");
        assert_eq!(fast, serde(CLIENT.as_bytes()).unwrap());
        assert!(matches!(fast.token, Cow::Borrowed(_)));
        let spaced = "\r\n { \"request_id\" : \"r\" ,\t\"token\":\"t\", \"quantity\":-3,\n\"sku_id\":0,\"session_id\":-42 } \n";
        let fast = purchase(spaced.as_bytes()).expect("any order, any whitespace");
        assert_eq!(fast, serde(spaced.as_bytes()).unwrap());
        assert_eq!((fast.session_id, fast.sku_id, fast.quantity), (-42, 0, -3));
        let widest = r#"{"session_id":999999999999999999,"sku_id":-999999999999999999,"quantity":1,"token":"é","request_id":"x"}"#;
        assert_eq!(purchase(widest.as_bytes()), serde(widest.as_bytes()));
        assert!(purchase(widest.as_bytes()).is_some());
    }

    #[test]
    fn bodies_outside_the_subset_go_to_serde() {
        let outside = [
            // Valid JSON serde reads but this reader leaves to it.
            r#"{"session_id":1,"sku_id":2,"quantity":1,"token":"a\"b","request_id":"r"}"#,
            r#"{"session\u005fid":1,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"[1,2,1,"t","r"]"#,
            r#"{"session_id":1000000000000000000,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            // What serde refuses.
            r#"{"session_id":1,"session_id":1,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":1,"sku_id":2,"quantity":1,"token":"t","request_id":"r","extra":0}"#,
            r#"{"session_id":1,"sku_id":2,"quantity":1,"token":"t"}"#,
            r#"{"session_id":01,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":1.0,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":1e2,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":-0,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":-,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":"1","sku_id":2,"quantity":1,"token":"t","request_id":"r"}"#,
            r#"{"session_id":1,"sku_id":2,"quantity":1,"token":"t","request_id":"r",}"#,
            r#"{"session_id":1,"sku_id":2,"quantity":1,"token":"t","request_id":"r"}x"#,
            "{\"session_id\":1,\"sku_id\":2,\"quantity\":1,\"token\":\"t\x01\",\"request_id\":\"r\"}",
            "{}",
            "",
            "{",
        ];
        for body in outside {
            assert_eq!(purchase(body.as_bytes()), None, "{body}");
        }
        let mut latin1 = CLIENT.as_bytes().to_vec();
        let at = CLIENT.find("late").unwrap();
        latin1[at] = 0xE9;
        assert_eq!(purchase(&latin1), None, "not UTF-8");
        assert!(serde(&latin1).is_none());
    }

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Any entry one time in `odds`, else one of the first `good`.
        fn pick(&mut self, list: &[&'static str], good: usize, odds: usize) -> &'static str {
            let from = if self.below(odds) == 0 { list.len() } else { good };
            list[self.below(from)]
        }
    }

    #[test]
    fn generated_and_mutated_bodies_never_disagree_with_serde() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // The first entries are what the reader takes; the rest are edge cases, picked now and
        // then (whitespace is picked twenty times per body, so more rarely).
        let spaces = ["", " ", "\n", "\t", "\r\n ", "\u{a0}", "\x0b"];
        let numbers = [
            "7",
            "-7",
            "999999999999999999",
            "0",
            "-0",
            "01",
            "1.5",
            "2e3",
            "-",
            "18446744073709551616",
            "9223372036854775807",
            "\"5\"",
            "null",
            "true",
        ];
        let strings = [
            "\"t\"",
            "\"\"",
            "\"é\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"tab\there\"",
            "5",
            "\"unterminated",
        ];
        let fields = ["session_id", "sku_id", "quantity", "token", "request_id"];
        let (mut taken, mut checked) = (0, 0);
        for _ in 0..20_000 {
            let mut order: Vec<&str> = fields.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            match rng.below(10) {
                0 => {
                    order.pop();
                }
                1 => order.push(fields[rng.below(fields.len())]),
                2 => order.push("other"),
                _ => {}
            }
            let mut body = String::from(rng.pick(&spaces, 5, 40));
            body.push('{');
            for (i, field) in order.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let value = match *field {
                    "token" | "request_id" => rng.pick(&strings, 3, 8),
                    _ => rng.pick(&numbers, 3, 8),
                };
                let sp = [
                    rng.pick(&spaces, 5, 40),
                    rng.pick(&spaces, 5, 40),
                    rng.pick(&spaces, 5, 40),
                    rng.pick(&spaces, 5, 40),
                ];
                body.push_str(&format!(
                    "{}\"{field}\"{}:{}{value}{}",
                    sp[0], sp[1], sp[2], sp[3]
                ));
            }
            body.push('}');
            body.push_str(rng.pick(&spaces, 5, 40));
            let mut bytes = body.into_bytes();
            // Every other body also gets a few random byte edits.
            if rng.below(2) == 0 {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bytes.len() + 1);
                    match rng.below(3) {
                        0 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        1 => {
                            let pick = b"{}[],:\"\\-0.e \x00\xff";
                            bytes.insert(at, pick[rng.below(pick.len())]);
                        }
                        _ if at < bytes.len() => bytes[at] = rng.next() as u8,
                        _ => {}
                    }
                }
            }
            assert!(agrees(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            checked += 1;
            if purchase(&bytes).is_some() {
                taken += 1;
            }
        }
        // The test only means something if both sides of the split were exercised.
        assert!(
            taken > 1_000 && taken < checked - 1_000,
            "{taken} of {checked} read here"
        );
    }
}
