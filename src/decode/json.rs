//! JSON records decoded straight into typed slots: the common flat record
//! by one scan of its bytes ([`super::flat`]), any other by a serde
//! visitor that walks the object once, keeps the schema's fields, and
//! skips the rest without building a `serde_json::Value` tree.

use super::flat::{decode_flat, field_named};
use crate::schema::{Column, ColumnType};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;
use tideflow_connectors::Value;

/// Decodes one JSON object into `values` (one slot per schema field, in
/// schema order; absent fields stay null). The error is the dead-letter
/// reason.
pub fn decode_object(text: &str, fields: &[Column], values: &mut Vec<Value>) -> Result<(), String> {
    values.clear();
    values.resize(fields.len(), Value::Null);
    if decode_flat(text, fields, values) {
        return Ok(());
    }
    values.iter_mut().for_each(|value| *value = Value::Null);
    decode_with_serde(text, fields, values)
}

/// Decodes any JSON text into `values` (one null per schema field), or
/// says precisely why it is not a record of the schema.
pub(super) fn decode_with_serde(
    text: &str,
    fields: &[Column],
    values: &mut [Value],
) -> Result<(), String> {
    let mut reason = None;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = RecordSeed {
        fields,
        values,
        reason: &mut reason,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match parsed {
        Ok(()) => Ok(()),
        Err(_) if reason.is_some() => Err(reason.unwrap_or_default()),
        Err(error) if error.is_data() => Err("not a JSON object".to_owned()),
        Err(error) => Err(format!("malformed JSON: {error}")),
    }
}

/// The whole record: a JSON object.
struct RecordSeed<'a> {
    fields: &'a [Column],
    values: &'a mut [Value],
    /// Set when a field has the wrong type: the precise reason.
    reason: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Writers mostly keep one field order, often the schema's: the
        // field after the last one found is tried before the others.
        let mut next = 0;
        while let Some(found) = map.next_key_seed(KeySeed {
            fields: self.fields,
            next,
        })? {
            match found {
                Some(slot) => {
                    next = slot + 1;
                    let field = &self.fields[slot];
                    self.values[slot] = map.next_value_seed(FieldSeed {
                        field,
                        reason: self.reason,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An object's key, resolved to the slot of the schema field it names
/// (`None` for a field the schema does not have) where the parser holds
/// it: a key is never copied (serde's `String` and `Cow` keys allocate
/// one string per key, a tenth of a JSONL backfill's time).
struct KeySeed<'a> {
    fields: &'a [Column],
    /// The slot tried first: the one after the last key found.
    next: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(field_named(self.fields, self.next, key))
    }
}

/// One field's value, checked against its schema type.
struct FieldSeed<'a> {
    field: &'a Column,
    reason: &'a mut Option<String>,
}

impl FieldSeed<'_> {
    fn wrong<E: serde::de::Error>(self, shown: &str) -> E {
        let message = format!(
            "field '{}': expected {}, got {shown}",
            self.field.name,
            self.field.ty.name()
        );
        *self.reason = Some(message.clone());
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        write!(formatter, "a {} value", self.field.ty.name())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, flag: bool) -> Result<Value, E> {
        match self.field.ty {
            ColumnType::Bool => Ok(Value::Bool(flag)),
            _ => Err(self.wrong(&flag.to_string())),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<Value, E> {
        match self.field.ty {
            ColumnType::I64 | ColumnType::TimestampMs => Ok(Value::I64(number)),
            ColumnType::F64 => Ok(Value::F64(number as f64)),
            _ => Err(self.wrong(&number.to_string())),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<Value, E> {
        match (self.field.ty, i64::try_from(number)) {
            (ColumnType::I64 | ColumnType::TimestampMs, Ok(number)) => Ok(Value::I64(number)),
            (ColumnType::F64, _) => Ok(Value::F64(number as f64)),
            _ => Err(self.wrong(&number.to_string())),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, number: f64) -> Result<Value, E> {
        match self.field.ty {
            ColumnType::F64 => Ok(Value::F64(number)),
            _ => Err(self.wrong(&serde_json::Value::from(number).to_string())),
        }
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Value, E> {
        match self.field.ty {
            ColumnType::Str => Ok(Value::Str(text.into())),
            _ => {
                let shown = serde_json::Value::from(text).to_string();
                let shown = if shown.len() > 40 {
                    format!("{}...", &shown[..shown.floor_char_boundary(40)])
                } else {
                    shown
                };
                Err(self.wrong(&shown))
            }
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _seq: A) -> Result<Value, A::Error> {
        Err(self.wrong("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Value, A::Error> {
        Err(self.wrong("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<Column> {
        crate::decode::test_fields(4)
    }

    fn decode(text: &str) -> Result<Vec<Value>, String> {
        let mut values = Vec::new();
        decode_object(text, &fields(), &mut values).map(|()| values)
    }

    /// Floats written with 17 significant digits (as other writers than
    /// tideflow do) read back as the standard library's correctly rounded
    /// parse gives them, bit for bit: JSON input must not change a
    /// feature's last bit.
    #[test]
    fn floats_of_seventeen_digits_read_back_correctly_rounded() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let number = f64::from_bits(next());
            if !number.is_finite() {
                continue;
            }
            let text = format!("{number:.16e}");
            let expected: f64 = text.parse().unwrap();
            let values = decode(&format!(r#"{{"amount": {text}}}"#)).unwrap();
            assert_eq!(
                values[1],
                Value::F64(expected),
                "{text} read as {:?}",
                values[1]
            );
        }
    }

    #[test]
    fn typed_fields_are_kept_and_others_skipped() {
        let values =
            decode(r#"{"extra": [1, {"a": 2}], "amount": 3, "name": "n", "ts": 17, "ok": true}"#)
                .unwrap();
        assert_eq!(
            values,
            [
                Value::Str("n".into()),
                Value::F64(3.0),
                Value::I64(17),
                Value::Bool(true)
            ]
        );
        // A key written with escapes names the field it spells.
        assert_eq!(
            decode(r#"{"am\u006funt": 2.5, "n\u0061me": "q"}"#).unwrap(),
            [
                Value::Str("q".into()),
                Value::F64(2.5),
                Value::Null,
                Value::Null
            ]
        );
        assert_eq!(
            decode(r#"{"amount": null}"#).unwrap(),
            [Value::Null, Value::Null, Value::Null, Value::Null]
        );
    }

    #[test]
    fn every_bad_record_gets_its_reason() {
        assert_eq!(
            decode(r#"{"amount": "ten"}"#).unwrap_err(),
            r#"field 'amount': expected f64, got "ten""#
        );
        assert_eq!(
            decode(r#"{"ts": 1.5}"#).unwrap_err(),
            "field 'ts': expected timestamp_ms, got 1.5"
        );
        assert_eq!(
            decode(r#"{"name": [1]}"#).unwrap_err(),
            "field 'name': expected string, got an array"
        );
        assert_eq!(decode("[1, 2]").unwrap_err(), "not a JSON object");
        assert!(
            decode(r#"{"name": "x""#)
                .unwrap_err()
                .starts_with("malformed JSON: EOF")
        );
        assert!(
            decode(r#"{"name": "x"} trailing"#)
                .unwrap_err()
                .starts_with("malformed JSON: trailing")
        );
    }
}
