//! Element types: plain floats and integers, and the GGUF block formats.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The type of a tensor's elements.
///
/// Plain types store one element per `size` bytes. GGUF block formats store
/// `block_size()` elements in `type_size()` bytes, exactly as ggml lays them out.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U32,
    U8,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 16] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::U8,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];
    /// The floating-point activation types: f32, f16, bf16.
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
    /// The GGUF block formats.
    pub const QUANTIZED: [DType; 10] =
        [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K];
    /// Weight formats `dequantize` and `quantized_matmul` accept.
    pub const WEIGHTS: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// The lowercase name used in `meta.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q8_0 => "q8_0",
            DType::Q2_K => "q2_k",
            DType::Q3_K => "q3_k",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
        }
    }

    /// Elements per block: 1 for plain types, 32 or 256 for GGUF blocks.
    pub fn block_size(self) -> usize {
        match self {
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => 32,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
            _ => 1,
        }
    }

    /// Bytes per block (per element for plain types).
    pub fn type_size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// True for the GGUF block formats.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// True for f32, f16 and bf16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The ggml type id GGUF files use for this type, if it has one.
    pub fn ggml_type_id(self) -> Option<u32> {
        Some(match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::I32 => 26,
            DType::BF16 => 30,
            DType::U32 | DType::U8 => return None,
        })
    }

    /// Bytes needed for `numel` elements, or `None` when `numel` is not a whole
    /// number of blocks (or the size overflows).
    pub fn bytes_for(self, numel: usize) -> Option<usize> {
        let bs = self.block_size();
        if numel % bs != 0 {
            return None;
        }
        (numel / bs).checked_mul(self.type_size())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a dtype name that is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDType(pub String);

impl fmt::Display for UnknownDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        write!(f, "unknown dtype '{}' (known: {}; fp32/fp16/float32/... are accepted too)", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownDType {}

impl FromStr for DType {
    type Err = UnknownDType;
    /// Accepts the canonical names, upper or lower case, plus the aliases
    /// `fp32`/`float32`/`float`, `fp16`/`float16`/`half`, `bfloat16`, `int32`, `uint32`, `uint8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.trim().to_ascii_lowercase();
        let alias = match l.as_str() {
            "fp32" | "float32" | "float" => Some(DType::F32),
            "fp16" | "float16" | "half" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            "int32" => Some(DType::I32),
            "uint32" => Some(DType::U32),
            "uint8" => Some(DType::U8),
            _ => None,
        };
        if let Some(d) = alias {
            return Ok(d);
        }
        DType::ALL.iter().copied().find(|d| d.name() == l).ok_or_else(|| UnknownDType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(d.name().to_uppercase().parse::<DType>().unwrap(), d);
            let j = serde_json::to_string(&d).unwrap();
            assert_eq!(j, format!("\"{}\"", d.name()));
        }
        assert_eq!("fp16".parse::<DType>().unwrap(), DType::F16);
        assert!("q9_9".parse::<DType>().is_err());
    }

    #[test]
    fn block_bytes_match_ggml() {
        // bits per weight, as ggml documents them
        let bpw = |d: DType| d.type_size() as f64 * 8.0 / d.block_size() as f64;
        assert_eq!(bpw(DType::Q4_0), 4.5);
        assert_eq!(bpw(DType::Q8_0), 8.5);
        assert_eq!(bpw(DType::Q4_K), 4.5);
        assert_eq!(bpw(DType::Q6_K), 6.5625);
        assert_eq!(bpw(DType::Q2_K), 2.625);
        assert_eq!(DType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(DType::Q4_K.bytes_for(100), None);
    }
}
