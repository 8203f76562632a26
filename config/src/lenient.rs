//! The one way a configuration value is read: [`Lenient`].
//!
//! Environment variables arrive as strings, and people write `max_message_size = 65536` as
//! readily as `"64KiB"`, so every field of the raw stage accepts the forms a person or an
//! environment would use, and every field of a kind accepts the same ones:
//!
//! | kind | field type | accepts |
//! |---|---|---|
//! | text (also durations, sizes, addresses, patterns) | [`Text`] | a string; a number is taken in its written form (`65536` is `"65536"`) |
//! | number | [`Num<T>`] | a whole number from 0 to the type's maximum, or its string form (`"2"`) |
//! | flag | [`Flag`] | `true`/`false`, or their string form (`"true"`, any case) |
//! | list | [`List`] | a list of texts, or one comma-separated string (`"a, b"`; `""` is the empty list) |
//!
//! The behaviour lives in the one `Deserialize` impl of [`Lenient`], chosen by the value's
//! type ([`Form`]), so a field cannot read differently from the others of its kind by
//! forgetting an attribute. A `Lenient` also holds "not set": the raw stage keeps every field
//! optional and applies no defaults.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::{Serialize, Serializer};

/// One configuration value as the file or the environment wrote it, or `None` when no layer
/// set it. Reads like an `Option<T>` (it dereferences to one); written back, `None` is left
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lenient<T>(pub(crate) Option<T>);

/// A string field: text, durations, sizes, addresses, patterns (parsed later, in `validate`).
pub(crate) type Text = Lenient<String>;
/// A non-negative integer field.
pub(crate) type Num<T> = Lenient<T>;
/// A boolean field.
pub(crate) type Flag = Lenient<bool>;
/// A list-of-strings field.
pub(crate) type List = Lenient<Vec<String>>;

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<T> Deref for Lenient<T> {
    type Target = Option<T>;

    fn deref(&self) -> &Option<T> {
        &self.0
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Form> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::read(d).map(|v| Lenient(Some(v)))
    }
}

/// A type a [`Lenient`] value can have, and the forms it is read from.
pub(crate) trait Form: Sized {
    /// Reads one value in any of the forms of its kind.
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

impl Form for String {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextForm)
    }
}

impl Form for bool {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FlagForm)
    }
}

impl Form for Vec<String> {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListForm)
    }
}

/// Unsigned integer types a field may have. TOML integers stop at `i64::MAX`, so larger values
/// are refused (keeping every value writable back by `Config::to_toml_string`).
pub(crate) trait UInt: TryFrom<u64> {
    /// The largest value accepted.
    const MAX: u64;
}

macro_rules! uint {
    ($($t:ty),*) => {$(
        impl UInt for $t {
            const MAX: u64 = if (<$t>::MAX as u128) < (i64::MAX as u128) { <$t>::MAX as u64 } else { i64::MAX as u64 };
        }

        impl Form for $t {
            fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(NumForm(PhantomData))
            }
        }
    )*};
}
uint!(u16, u32, usize);

/// A non-negative integer, or its string form: `2` or `"2"`.
struct NumForm<T>(PhantomData<T>);

impl<T: UInt> Visitor<'_> for NumForm<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number from 0 to {}", T::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match T::try_from(v) {
            Ok(n) if v <= T::MAX => Ok(n),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        match s.trim().parse::<u64>() {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Str(s), &self)),
        }
    }
}

/// `true`/`false`, or their string form.
struct FlagForm;

impl Visitor<'_> for FlagForm {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("true or false")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
        }
    }
}

/// A string; a number is taken in its written form (`max_message_size = 65536`).
struct TextForm;

impl Visitor<'_> for TextForm {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_owned())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// One list element, read like a [`Text`].
struct Item(String);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextForm).map(Item)
    }
}

/// A list of strings, or one comma-separated string (`"a, b"`; `""` is the empty list).
struct ListForm;

impl<'de> Visitor<'de> for ListForm {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list or a comma-separated string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Item(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}
