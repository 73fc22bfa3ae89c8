//! A bounded little-endian cursor over the mapped file: every read checks
//! the bytes left first and fails with [`ModelError::Truncated`] naming the
//! field, so no header value can make the parser read or allocate past the
//! end of the file.

use std::path::Path;

use crate::error::{ModelError, Result};

/// Reads GGUF's little-endian primitives from a byte slice, front to back.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a Path,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], file: &'a Path) -> Self {
        Reader {
            bytes,
            pos: 0,
            file,
        }
    }

    pub(crate) fn file(&self) -> &'a Path {
        self.file
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read: the bound on every count read from now on.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes, or `Truncated` naming `field`.
    pub(crate) fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let available = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= available => {
                let out = &self.bytes[self.pos..self.pos + n];
                self.pos += n;
                Ok(out)
            }
            _ => Err(ModelError::Truncated {
                file: self.file.to_path_buf(),
                field: field(),
                offset: self.pos as u64,
                needed: n,
                available: available as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn i8(&mut self, field: &dyn Fn() -> String) -> Result<i8> {
        Ok(i8::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u16(&mut self, field: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i16(&mut self, field: &dyn Fn() -> String) -> Result<i16> {
        Ok(i16::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i32(&mut self, field: &dyn Fn() -> String) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i64(&mut self, field: &dyn Fn() -> String) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn f32(&mut self, field: &dyn Fn() -> String) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn f64(&mut self, field: &dyn Fn() -> String) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array(field)?))
    }

    /// A GGUF string: a u64 byte length, then UTF-8 bytes. The length is
    /// checked against the bytes left before anything is copied.
    pub(crate) fn string(&mut self, field: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("{} (length)", field()))?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ModelError::Invalid {
            file: self.file.to_path_buf(),
            field: field(),
            reason: format!("string is not UTF-8: {e}"),
        })
    }

    /// Refuses `count` items of at least `min_item_bytes` each when the bytes
    /// left could not hold them; the count returned is safe to allocate for.
    pub(crate) fn bounded_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        field: &dyn Fn() -> String,
    ) -> Result<usize> {
        let available = self.remaining() as u64;
        let max = available / min_item_bytes.max(1);
        if count > max {
            return Err(ModelError::CountTooLarge {
                file: self.file.to_path_buf(),
                field: field(),
                count,
                max,
                available,
            });
        }
        // count <= available, which is a usize.
        Ok(count as usize)
    }
}
