//! ggml tensor types: their numbers and names as ggml defines them, and
//! the block size / bytes per block that size a tensor's data. Knowing the
//! size of a type is separate from dequantizing it: every type listed here
//! can be bounds-checked and read as bytes, only some can be dequantized.

use std::fmt;

/// A ggml tensor type, by its number in the file. Numbers ggml never
/// assigned, or assigned and later removed (4, 5, 31..33, 36..38), are
/// `Unknown`: such a tensor is listed but its data cannot be sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    Bf16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
    /// A number this reader does not know.
    Unknown(u32),
}

/// (type, number, ggml name, elements per block, bytes per block).
const TABLE: [(GgmlType, u32, &str, u64, u64); 32] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8K, 15, "Q8_K", 256, 292),
    (GgmlType::Iq2Xxs, 16, "IQ2_XXS", 256, 66),
    (GgmlType::Iq2Xs, 17, "IQ2_XS", 256, 74),
    (GgmlType::Iq3Xxs, 18, "IQ3_XXS", 256, 98),
    (GgmlType::Iq1S, 19, "IQ1_S", 256, 50),
    (GgmlType::Iq4Nl, 20, "IQ4_NL", 32, 18),
    (GgmlType::Iq3S, 21, "IQ3_S", 256, 110),
    (GgmlType::Iq2S, 22, "IQ2_S", 256, 82),
    (GgmlType::Iq4Xs, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::Iq1M, 29, "IQ1_M", 256, 56),
    (GgmlType::Bf16, 30, "BF16", 1, 2),
    (GgmlType::Tq1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::Tq2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::Mxfp4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// The type with ggml number `id` (`Unknown` if not in ggml's table).
    pub fn from_id(id: u32) -> Self {
        TABLE
            .iter()
            .find(|row| row.1 == id)
            .map_or(GgmlType::Unknown(id), |row| row.0)
    }

    fn row(self) -> Option<&'static (GgmlType, u32, &'static str, u64, u64)> {
        TABLE.iter().find(|row| row.0 == self)
    }

    /// The ggml number of this type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::Unknown(id) => id,
            t => t.row().map_or(u32::MAX, |row| row.1),
        }
    }

    /// ggml's name of this type ("Q4_K"); `Unknown` reads "unknown".
    pub fn name(self) -> &'static str {
        self.row().map_or("unknown", |row| row.2)
    }

    /// (elements per block, bytes per block), for known types.
    pub fn block(self) -> Option<(u64, u64)> {
        self.row().map(|row| (row.3, row.4))
    }

    /// The block format devices hold as is (core's [`QuantType`]), for the
    /// quantized types they have kernels for.
    pub fn quant(self) -> Option<hetero_core::QuantType> {
        use hetero_core::QuantType as Q;
        Some(match self {
            GgmlType::Q8_0 => Q::Q8_0,
            GgmlType::Q4_0 => Q::Q4_0,
            GgmlType::Q4_1 => Q::Q4_1,
            GgmlType::Q4K => Q::Q4K,
            GgmlType::Q5K => Q::Q5K,
            GgmlType::Q6K => Q::Q6K,
            _ => return None,
        })
    }

    /// True for the types [`GgufFile::dequantize`](super::GgufFile::dequantize) turns into f32.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::Bf16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.id())
    }
}
