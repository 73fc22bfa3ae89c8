//! Metadata values: the thirteen GGUF value types, their parsing (arrays of
//! any type, nested to a bounded depth), and [`Metadata`], the key -> value
//! map with typed getters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::reader::Reader;
use crate::error::{ModelError, Result};

/// Arrays nest to at most this depth. The format sets no limit, but a file
/// of nested array headers would otherwise recurse once per 12 bytes and
/// could overflow the stack; real files nest at most once.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A GGUF metadata value type, as numbered in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type with GGUF number `id`, if GGUF defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF number of this type.
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in the file: bounds an
    /// array's count by the bytes left before the array is allocated.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            // element type (4) + count (8)
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// An array: its element type (kept so an empty array still has one)
    /// and its elements, all of that type.
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short description for type errors: "u32", "array of string".
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(t, _) => format!("array of {t:?}").to_lowercase(),
            v => format!("{:?}", v.value_type()).to_lowercase(),
        }
    }

    /// Any unsigned or non-negative signed integer, widened: GGUF writers
    /// disagree on the width of counts (u32 in llama.cpp, sometimes u64 or
    /// i32 elsewhere).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one value of type `ty`; `depth` counts the arrays around it.
pub(crate) fn read_value(
    r: &mut Reader<'_>,
    ty: ValueType,
    depth: usize,
    field: &dyn Fn() -> String,
) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8(field)?),
        ValueType::I8 => Value::I8(r.i8(field)?),
        ValueType::U16 => Value::U16(r.u16(field)?),
        ValueType::I16 => Value::I16(r.i16(field)?),
        ValueType::U32 => Value::U32(r.u32(field)?),
        ValueType::I32 => Value::I32(r.i32(field)?),
        ValueType::F32 => Value::F32(r.f32(field)?),
        ValueType::U64 => Value::U64(r.u64(field)?),
        ValueType::I64 => Value::I64(r.i64(field)?),
        ValueType::F64 => Value::F64(r.f64(field)?),
        ValueType::Bool => match r.u8(field)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(ModelError::Invalid {
                    file: r.file().to_path_buf(),
                    field: field(),
                    reason: format!("bool byte is {b}, not 0 or 1"),
                });
            }
        },
        ValueType::String => Value::String(r.string(field)?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(ModelError::Invalid {
                    file: r.file().to_path_buf(),
                    field: field(),
                    reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                });
            }
            let type_id = r.u32(&|| format!("{} (array element type)", field()))?;
            let elem = ValueType::from_id(type_id).ok_or_else(|| ModelError::UnknownValueType {
                file: r.file().to_path_buf(),
                field: format!("{} (array element type)", field()),
                type_id,
            })?;
            let count = r.u64(&|| format!("{} (array count)", field()))?;
            let n = r.bounded_count(count, elem.min_bytes(), &|| {
                format!("{} (array count)", field())
            })?;
            // At most one `Value` (32 bytes) per element byte left: the
            // allocation is bounded by the file, at worst 32x its size for
            // a u8 array (real files' large arrays are strings and f32s,
            // 4x to 8x).
            let mut items = Vec::with_capacity(n);
            for i in 0..n {
                items.push(read_value(r, elem, depth + 1, &|| {
                    format!("{}[{i}]", field())
                })?);
            }
            Value::Array(elem, items)
        }
    })
}

/// The metadata of a GGUF file: key -> value, with typed getters whose
/// errors name the file and the key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    file: PathBuf,
    values: BTreeMap<String, Value>,
}

impl Metadata {
    pub(crate) fn new(file: &Path) -> Self {
        Metadata {
            file: file.to_path_buf(),
            values: BTreeMap::new(),
        }
    }

    /// Adds a key; a key seen twice is an error (llama.cpp refuses it too).
    pub(crate) fn insert(&mut self, key: String, value: Value) -> Result<()> {
        if self.values.contains_key(&key) {
            return Err(ModelError::Invalid {
                file: self.file.clone(),
                field: format!("metadata key {key}"),
                reason: "key appears twice".into(),
            });
        }
        self.values.insert(key, value);
        Ok(())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the file has no metadata.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.values.get(key).ok_or_else(|| ModelError::MissingKey {
            file: self.file.clone(),
            key: key.into(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> ModelError {
        ModelError::WrongType {
            file: self.file.clone(),
            key: key.into(),
            expected,
            found: found.type_name(),
        }
    }

    /// An integer key that fits in u64 (any integer width, see [`Value::as_u64`]).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// An integer key that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "an integer that fits in u32", v))
    }

    /// A float key (f32, or f64 narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(self.wrong(key, "a float", v)),
        }
    }

    /// A bool key.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// An array key, whatever its element type.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(_, items) => Ok(items),
            v => Err(self.wrong(key, "an array", v)),
        }
    }

    /// An array-of-strings key (a tokenizer's vocabulary or merges).
    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.require(key)? {
            Value::Array(ValueType::String, items) => {
                Ok(items.iter().filter_map(Value::as_str).collect())
            }
            v => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// An array-of-f32 key (token scores).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.require(key)? {
            Value::Array(ValueType::F32, items) => Ok(items
                .iter()
                .filter_map(|v| match v {
                    Value::F32(x) => Some(*x),
                    _ => None,
                })
                .collect()),
            v => Err(self.wrong(key, "an array of f32", v)),
        }
    }

    /// An array-of-integers key (token types), each widened to i64; an
    /// element that does not fit (a u64 above i64::MAX) is a type error.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        let Value::Array(_, items) = v else {
            return Err(self.wrong(key, "an array of integers", v));
        };
        items
            .iter()
            .map(|x| match *x {
                Value::I8(a) => Some(a.into()),
                Value::I16(a) => Some(a.into()),
                Value::I32(a) => Some(a.into()),
                Value::I64(a) => Some(a),
                Value::U8(a) => Some(a.into()),
                Value::U16(a) => Some(a.into()),
                Value::U32(a) => Some(a.into()),
                Value::U64(a) => i64::try_from(a).ok(),
                _ => None,
            })
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| self.wrong(key, "an array of integers", v))
    }
}
