//! A test-only GGUF writer: small files with any metadata value and any
//! tensor type, laid out as the format says (counts u64, strings with a u64
//! length, tensor data aligned), plus raw little-endian helpers for crafting
//! broken headers.

#![allow(dead_code)] // each test file uses part of it

use hetero_models::gguf::Value;

/// A GGUF file being built.
pub struct Writer {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Value)>,
    /// name, dims, ggml type number, data bytes
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Writer {
    pub fn new(version: u32) -> Self {
        Writer {
            version,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        if let ("general.alignment", Value::U32(a)) = (key, &value) {
            self.alignment = (*a).into();
        }
        self.kvs.push((key.into(), value));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.into(), dims.to_vec(), ggml_type, data));
        self
    }

    /// The offset each tensor gets in the data section.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let o = at;
                at = (at + t.3.len() as u64).div_ceil(self.alignment) * self.alignment;
                o
            })
            .collect()
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            string(&mut b, k);
            b.extend_from_slice(&v.value_type().id().to_le_bytes());
            value(&mut b, v);
        }
        let offsets = self.offsets();
        for ((name, dims, ty, _), off) in self.tensors.iter().zip(&offsets) {
            string(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        let data_start = (b.len() as u64).div_ceil(self.alignment) * self.alignment;
        b.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(&offsets) {
            b.resize((data_start + off) as usize, 0);
            b.extend_from_slice(data);
        }
        b
    }
}

pub fn string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A value without its leading type number (arrays carry their element
/// type and count).
pub fn value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::String(s) => string(b, s),
        Value::Array(t, items) => {
            b.extend_from_slice(&t.id().to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                value(b, i);
            }
        }
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

/// f16 bytes of `x`.
pub fn f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// A file with some of everything: the base of the mutation tests.
pub fn sample() -> Writer {
    use hetero_models::gguf::ValueType;
    let mut q4_0 = Vec::new();
    for blk in 0..2u8 {
        q4_0.extend_from_slice(&f16(0.5 + f32::from(blk)));
        q4_0.extend((0..16u8).map(|i| i.wrapping_mul(17).wrapping_add(blk)));
    }
    Writer::new(3)
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("bc".into())],
            ),
        )
        .kv(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(ValueType::U8, vec![Value::U8(1)])],
            ),
        )
        .tensor("w", &[32, 2], 2, q4_0)
        .tensor(
            "v",
            &[4],
            0,
            [1.0f32, -2.0, 3.5, 0.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )
}
