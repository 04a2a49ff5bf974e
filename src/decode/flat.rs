//! The fast path of JSON records: one flat object whose strings carry no
//! escapes, read by a single scan of its bytes into the schema's slots as
//! [`FlatCell`]s, which go straight into a batch's columns. Nearly every
//! record a producer writes has this shape, and serde's visitor (a call
//! per key and per value, each value of any type, then a [`Value`] per
//! field moved into its column) took twice as long as parsing the same
//! record into a typed struct.
//!
//! Anything else (an escape, a nested value, an integer of more than 18
//! digits, a value of another type than its field's, JSON that is not
//! well formed) is left to the serde decoder in [`super::json`], which
//! gives the same values or the precise reason: this path answers only
//! "decoded" or "not mine", so what a record decodes to never depends on
//! which path read it.

use crate::schema::{Column, ColumnType};
use tideflow_connectors::{Cell, Value};

/// A field's value as the scan found it; a string as where it lies in
/// the record's text, so that the scan allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FlatCell {
    Null,
    Bool(bool),
    I64(i64),
    F64(f64),
    Str { start: usize, end: usize },
}

impl FlatCell {
    /// The cell, its string read from `text`, the record it was scanned
    /// from.
    #[inline]
    pub fn cell(self, text: &str) -> Cell<'_> {
        match self {
            FlatCell::Null => Cell::Null,
            FlatCell::Bool(flag) => Cell::Bool(flag),
            FlatCell::I64(number) => Cell::I64(number),
            FlatCell::F64(number) => Cell::F64(number),
            FlatCell::Str { start, end } => Cell::Str(&text[start..end]),
        }
    }
}

/// Scans `text` into `cells` (one per schema field, in schema order;
/// absent fields null) if it is a record of the common shape. Returns
/// false when it is not, leaving `cells` in no particular state: the
/// record is then serde's to decode.
pub fn scan_flat(text: &str, fields: &[Column], cells: &mut Vec<FlatCell>) -> bool {
    cells.clear();
    cells.resize(fields.len(), FlatCell::Null);
    Scanner { text, at: 0 }.object(fields, cells).is_some()
}

/// Decodes `text` into `values` (one per schema field) if it is a record
/// of the common shape (see [`scan_flat`]).
pub fn decode_flat(text: &str, fields: &[Column], values: &mut [Value]) -> bool {
    let mut cells = Vec::with_capacity(fields.len());
    if !scan_flat(text, fields, &mut cells) {
        return false;
    }
    for (value, cell) in values.iter_mut().zip(cells) {
        *value = cell.cell(text).to_value();
    }
    true
}

/// A number as written: an integer of at most 18 digits, or one with a
/// fraction or an exponent.
enum Number {
    Integer(i64),
    Float(f64),
}

/// Digits gathered as they are scanned (their value wraps past 19).
#[derive(Default)]
struct Mantissa {
    value: u64,
    digits: usize,
}

/// The powers of ten a double holds exactly.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A position in a record's text; each step returns `None` where the
/// record leaves the common shape.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn object(&mut self, fields: &[Column], cells: &mut [FlatCell]) -> Option<()> {
        self.skip_whitespace();
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.eat(b'}') {
            return self.end();
        }
        // Writers mostly keep one field order: the field after the last
        // one found is tried before the others.
        let mut next = 0;
        loop {
            let key = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            match field_named(fields, next, key) {
                Some(slot) => {
                    cells[slot] = self.value(fields[slot].ty)?;
                    next = slot + 1;
                }
                None => self.skip_value()?,
            }
            self.skip_whitespace();
            match self.byte()? {
                b',' => self.skip_whitespace(),
                b'}' => return self.end(),
                _ => return None,
            }
        }
    }

    /// Only whitespace may follow the object.
    fn end(&mut self) -> Option<()> {
        self.skip_whitespace();
        (self.at == self.text.len()).then_some(())
    }

    /// A field's value, of its field's type (a null fits any).
    fn value(&mut self, ty: ColumnType) -> Option<FlatCell> {
        match (self.peek()?, ty) {
            (b'"', ColumnType::Str) => {
                let start = self.at + 1;
                self.string()?;
                Some(FlatCell::Str {
                    start,
                    end: self.at - 1,
                })
            }
            (b'n', _) => self.literal("null").map(|()| FlatCell::Null),
            (b't', ColumnType::Bool) => self.literal("true").map(|()| FlatCell::Bool(true)),
            (b'f', ColumnType::Bool) => self.literal("false").map(|()| FlatCell::Bool(false)),
            (b'-' | b'0'..=b'9', _) => match (self.number()?, ty) {
                (Number::Integer(number), ColumnType::I64 | ColumnType::TimestampMs) => {
                    Some(FlatCell::I64(number))
                }
                (Number::Integer(number), ColumnType::F64) => Some(FlatCell::F64(number as f64)),
                // Correctly rounded, as serde_json's `float_roundtrip`
                // reads it; out of range is serde's error to give.
                (Number::Float(number), ColumnType::F64) => {
                    number.is_finite().then_some(FlatCell::F64(number))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Steps over the value of a field the schema does not have.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'n' => self.literal("null"),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }

    /// A string without escapes or control characters, without its
    /// quotes.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        // Both ends are ASCII quotes, so the slice lies on characters.
        let text = &self.text[start..self.at];
        self.at += 1;
        Some(text)
    }

    /// A number by JSON's grammar. Its digits are gathered as they are
    /// scanned: an integer is complete at its last digit, and a decimal of
    /// at most 15 digits whose exponent is within 22 of them is a quotient
    /// or product of two floats that hold it exactly, so one correctly
    /// rounded operation gives it (Clinger's fast path); any other is
    /// parsed from its text.
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        let negative = self.eat(b'-');
        let mut mantissa = Mantissa::default();
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.gather_digits(&mut mantissa),
            _ => return None,
        }
        let integer_digits = mantissa.digits;
        let mut float = false;
        let mut exponent: i64 = 0;
        if self.eat(b'.') {
            float = true;
            let before = mantissa.digits;
            self.gather_digits(&mut mantissa);
            let fraction_digits = mantissa.digits - before;
            if fraction_digits == 0 {
                return None;
            }
            exponent -= fraction_digits as i64;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            float = true;
            self.at += 1;
            let negative_exponent = !self.eat(b'+') && self.eat(b'-');
            let mut written = Mantissa::default();
            self.gather_digits(&mut written);
            if written.digits == 0 {
                return None;
            }
            let written = if written.digits > 18 {
                i64::MAX / 2
            } else {
                written.value as i64
            };
            exponent += if negative_exponent { -written } else { written };
        }
        if !float {
            // Longer integers may not fit an i64; serde reads `-0` as a
            // float.
            if integer_digits > 18 || (negative && integer_digits == 0) {
                return None;
            }
            let magnitude = mantissa.value as i64;
            return Some(Number::Integer(if negative {
                -magnitude
            } else {
                magnitude
            }));
        }
        let exact = mantissa.digits <= 15 && (-22..=22).contains(&exponent);
        let number = if exact {
            let significand = mantissa.value as f64;
            let scale = POWERS_OF_TEN[exponent.unsigned_abs() as usize];
            if exponent < 0 {
                significand / scale
            } else {
                significand * scale
            }
        } else {
            self.text[start..self.at].parse().ok()?
        };
        let number = if negative && exact { -number } else { number };
        Some(Number::Float(number))
    }

    /// Steps over digits, gathering them into `mantissa`.
    #[inline]
    fn gather_digits(&mut self, mantissa: &mut Mantissa) {
        let bytes = self.text.as_bytes();
        while let Some(digit) = bytes.get(self.at).filter(|byte| byte.is_ascii_digit()) {
            mantissa.value = mantissa
                .value
                .wrapping_mul(10)
                .wrapping_add(u64::from(digit - b'0'));
            mantissa.digits += 1;
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let found = self.text.as_bytes()[self.at..].starts_with(word.as_bytes());
        found.then(|| self.at += word.len())
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while matches!(bytes.get(self.at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, expected: u8) -> bool {
        let found = self.peek() == Some(expected);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, expected: u8) -> Option<()> {
        self.eat(expected).then_some(())
    }
}

/// The slot of the schema field named `key`, trying `next` first.
#[inline]
pub(super) fn field_named(fields: &[Column], next: usize, key: &str) -> Option<usize> {
    match fields.get(next) {
        Some(field) if field.name == key => Some(next),
        _ => fields.iter().position(|field| field.name == key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::json::decode_with_serde;
    use proptest::prelude::*;

    fn fields() -> Vec<Column> {
        crate::decode::test_fields(5)
    }

    /// The fast path's values, if it takes the record.
    fn flat(text: &str) -> Option<Vec<Value>> {
        let mut values = vec![Value::Null; fields().len()];
        decode_flat(text, &fields(), &mut values).then_some(values)
    }

    fn serde(text: &str) -> Result<Vec<Value>, String> {
        let mut values = vec![Value::Null; fields().len()];
        decode_with_serde(text, &fields(), &mut values).map(|()| values)
    }

    /// Values equal to the bit (`-0.0` is not `0.0`).
    fn bits(values: &[Value]) -> Vec<String> {
        values
            .iter()
            .map(|value| match value {
                Value::F64(number) => format!("f64 {:x}", number.to_bits()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A key: the schema's names most often, an unknown one, or one the
    /// fast path leaves to serde (escaped); `true` when it is plain.
    fn key() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            4 => prop::sample::select(vec!["name", "amount", "ts", "ok", "count"])
                .prop_map(|name| (format!("\"{name}\""), true)),
            1 => prop::sample::select(vec!["extra", "Amount", "ts ", "é", ""])
                .prop_map(|name| (format!("\"{name}\""), true)),
            1 => prop::sample::select(vec![r#""am\u006funt""#, r#""n\"ame""#, "\"na\tme\""])
                .prop_map(|name| (name.to_owned(), false)),
        ]
    }

    /// A value's text and whether the fast path must take it (for some
    /// field's type; of another type it is left to serde either way).
    fn value() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            2 => any::<i64>()
                .prop_map(|number| (number.to_string(), number.unsigned_abs() < 10u64.pow(18))),
            2 => (-1_000_000i64..1_000_000).prop_map(|number| (number.to_string(), true)),
            2 => any::<f64>().prop_map(|number| (format!("{number:?}"), number.is_finite())),
            1 => any::<f64>().prop_map(|number| (format!("{number:.16e}"), number.is_finite())),
            1 => any::<u64>().prop_map(|bits| {
                let number = f64::from_bits(bits);
                (format!("{number:e}"), number.is_finite())
            }),
            // Decimals as amounts are written, around 15 digits (where
            // an exact quotient stops being enough) and exponents around
            // 22 (where a power of ten stops being exact).
            2 => (1u64..10u64.pow(17), 0usize..19, any::<bool>()).prop_map(|(digits, places, negative)| {
                let digits = format!("{digits:0>width$}", width = places + 1);
                let (whole, fraction) = digits.split_at(digits.len() - places);
                let sign = if negative { "-" } else { "" };
                match places {
                    0 => (format!("{sign}{whole}.0"), true),
                    _ => (format!("{sign}{whole}.{fraction}"), true),
                }
            }),
            1 => (-10i64.pow(16)..10i64.pow(16), -30i32..30, prop::sample::select(vec!["e", "E", "e+"]))
                .prop_map(|(digits, exponent, marker)| {
                    let marker = if exponent < 0 { "e" } else { marker };
                    (format!("{digits}{marker}{exponent}"), true)
                }),
            2 => "[a-z0-9 é]{0,30}".prop_map(|text| (format!("\"{text}\""), true)),
            1 => prop::sample::select(vec!["true", "false", "null"])
                .prop_map(|word| (word.to_owned(), true)),
            2 => prop::sample::select(vec![
                "0", "-0", "-0.0", "0.0", "01", "1.", ".5", "1e", "1e+", "-", "+1", "1e400",
                "-1e400", "1e-400", "-1e-400", "123456789012345678", "-123456789012345678",
                "1234567890123456789", "99999999999999999999", "1E5", "2.5e-3", "nul", "truee",
                "[1, 2]", "{\"a\": 1}", "[]", "{}", "\"a\\\"b\"", "\"\\u00e9\"", "\"tab\there\"",
                "\"open", "NaN", "Infinity",
            ])
            .prop_map(|text| (text.to_owned(), false)),
        ]
    }

    fn whitespace() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n"])
    }

    /// A record written from keys, values and whitespace, sometimes
    /// broken; `true` when every part of it is plain and well formed.
    fn record() -> impl Strategy<Value = (String, bool)> {
        let member = (key(), whitespace(), whitespace(), value(), whitespace());
        let breakage = prop::sample::select(vec![
            None,
            None,
            None,
            Some(",}"),
            Some("} x"),
            Some("}}"),
            Some(""),
            Some("]"),
        ]);
        (prop::collection::vec(member, 0..7), whitespace(), breakage).prop_map(
            |(members, outer, breakage)| {
                let mut plain = breakage.is_none();
                let mut text = format!("{outer}{{");
                for (index, ((key, plain_key), before, after, (value, plain_value), end)) in
                    members.iter().enumerate()
                {
                    plain &= plain_key & plain_value;
                    if index > 0 {
                        text.push(',');
                    }
                    text.push_str(&format!("{before}{key}{after}:{before}{value}{end}"));
                }
                text.push_str(breakage.unwrap_or("}"));
                text.push_str(outer);
                (text, plain)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the fast path takes, it decodes to exactly what serde
        /// does; every plain, well-formed record whose values fit their
        /// fields it takes.
        #[test]
        fn takes_only_what_serde_reads_the_same((text, plain) in record()) {
            let serde = serde(&text);
            match flat(&text) {
                Some(values) => {
                    let expected = serde.unwrap_or_else(|error| panic!("{text}: serde says {error}"));
                    prop_assert_eq!(bits(&values), bits(&expected), "{}", text);
                }
                None => prop_assert!(
                    !plain || serde.is_err(),
                    "the fast path left a plain record to serde: {}",
                    text
                ),
            }
        }
    }

    /// Decimals of up to 17 digits with exponents around the fast path's
    /// limits read as the standard library's correctly rounded parse
    /// reads them, bit for bit.
    #[test]
    fn decimals_read_correctly_rounded() {
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..200_000 {
            let digits = next() % 10u64.pow(1 + (next() % 17) as u32);
            let exponent = (next() % 61) as i64 - 30;
            let text = match next() % 3 {
                0 => format!("{digits}e{exponent}"),
                _ => {
                    let places = (next() % 18) as usize;
                    let padded = format!("{digits:0>width$}", width = places + 1);
                    let (whole, fraction) = padded.split_at(padded.len() - places);
                    format!("{whole}.{fraction}0")
                }
            };
            let expected: f64 = text.parse().unwrap();
            let values = flat(&format!(r#"{{"amount":{text}}}"#)).expect("a flat record");
            assert_eq!(
                bits_of(&values[1]),
                Some(expected.to_bits()),
                "{text} read as {:?}",
                values[1]
            );
        }
    }

    fn bits_of(value: &Value) -> Option<u64> {
        match value {
            Value::F64(number) => Some(number.to_bits()),
            _ => None,
        }
    }

    #[test]
    fn common_records_take_the_fast_path() {
        let text = r#"{"name":"u123","amount":12.5,"ts":1700000000000,"ok":true,"count":-3}"#;
        assert_eq!(
            flat(text).expect("a flat record"),
            [
                Value::Str("u123".into()),
                Value::F64(12.5),
                Value::I64(1_700_000_000_000),
                Value::Bool(true),
                Value::I64(-3)
            ]
        );
        let reordered = " { \"extra\" : [1], \"ts\": 5 }\n";
        assert!(flat(reordered).is_none(), "a nested value is serde's");
        assert_eq!(
            flat("{\"extra\": \"x\", \"amount\": 7, \"ts\": 5}\n").expect("a flat record"),
            [
                Value::Null,
                Value::F64(7.0),
                Value::I64(5),
                Value::Null,
                Value::Null
            ]
        );
    }
}
