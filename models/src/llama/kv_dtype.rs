//! The element type of a model's key/value cache: f32, or f16 for half
//! the bytes per position (so twice the sequences, or twice the context,
//! in the same memory). The cache is written by `convert_copy` from the
//! f32 keys and values a layer computes, and the attention widens it back
//! to f32 as it reads: only the stored values are rounded (relative error
//! at most 2^-11), every product and sum stays f32.

use std::fmt;
use std::str::FromStr;

use hetero_core::{DType, DynDevice, Error, Result};
use serde::{Deserialize, Serialize};

/// Which dtype a model's KV cache is held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// f16 where every device of the model reads f16 caches
    /// (`Capabilities::kv_cache_dtypes`), else f32.
    #[default]
    Auto,
    F32,
    F16,
}

impl KvCacheDtype {
    /// The dtype for a model whose layers are on `devices`: `Auto` as
    /// documented; `F16` on a device without f16 caches is `Unsupported`
    /// naming it.
    pub fn resolve<'a>(
        self,
        devices: impl IntoIterator<Item = &'a dyn DynDevice>,
    ) -> Result<DType> {
        let without_f16: Vec<&dyn DynDevice> = devices
            .into_iter()
            .filter(|d| !d.capabilities().kv_cache_takes(DType::F16))
            .collect();
        match self {
            KvCacheDtype::F32 => Ok(DType::F32),
            KvCacheDtype::Auto if without_f16.is_empty() => Ok(DType::F16),
            KvCacheDtype::Auto => Ok(DType::F32),
            KvCacheDtype::F16 => match without_f16.first() {
                None => Ok(DType::F16),
                Some(d) => Err(Error::unsupported(
                    d.id().backend,
                    format!(
                        "an f16 KV cache on {} (its attention reads f32 caches only; \
                         use --kv-dtype f32 or auto)",
                        d.id()
                    ),
                )),
            },
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::F32 => "f32",
            KvCacheDtype::F16 => "f16",
        })
    }
}

impl FromStr for KvCacheDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(KvCacheDtype::Auto),
            "f32" => Ok(KvCacheDtype::F32),
            "f16" => Ok(KvCacheDtype::F16),
            other => Err(Error::invalid(
                "KV cache dtype",
                format!("{other:?}; expected auto, f32 or f16"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for k in [KvCacheDtype::Auto, KvCacheDtype::F32, KvCacheDtype::F16] {
            assert_eq!(k.to_string().parse::<KvCacheDtype>().unwrap(), k);
        }
        assert!("bf16".parse::<KvCacheDtype>().is_err());
    }
}
