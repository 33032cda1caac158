//! Every ggml tensor type a GGUF file can name, with its block geometry.
//!
//! The ids, block sizes and bytes per block follow ggml's `ggml.h` (`enum ggml_type`) and
//! `ggml-common.h` (the `block_*` structs and their `static_assert`s). Knowing the geometry
//! of every type lets the reader compute and bounds-check the byte size of every tensor,
//! including the ones Ingot cannot compute with.

use ingot_core::DType;
use std::fmt;

/// A ggml tensor type, as stored in a GGUF tensor info (`u32` id).
///
/// Ids 4 and 5 (`Q4_2`, `Q4_3`), 31–33 (`Q4_0_4_4`, `Q4_0_4_8`, `Q4_0_8_8`) and 36–38
/// (`IQ4_NL_4_4`, `IQ4_NL_4_8`, `IQ4_NL_8_8`) were removed from ggml and are not valid in a file.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

impl GgmlType {
    /// Every type that may appear in a file, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The type with this id, or `None` for an id that is unknown or was removed from ggml.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The id stored in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name as GGUF tools print it (`Q4_K`, `BF16`, `IQ2_XXS`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
            Q2_0 => "Q2_0",
        }
    }

    /// Elements per block: 1 for plain types.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            NVFP4 | Q2_0 => 64,
            Q1_0 => 128,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0
            | TQ2_0 => 256,
        }
    }

    /// Bytes per block (per element for plain types), `sizeof(block_*)` in ggml.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            F64 | I64 => 8,
            I8 => 1,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
            NVFP4 => 36,
            Q1_0 => 18,
            Q2_0 => 18,
        }
    }

    /// True for the block formats (more than one element per block).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes for `numel` elements, or `None` when `numel` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, numel: u64) -> Option<u64> {
        let bs = self.block_size();
        if numel % bs != 0 {
            return None;
        }
        (numel / bs).checked_mul(self.type_size())
    }

    /// The Ingot dtype of this type, where Ingot has one.
    pub fn to_dtype(self) -> Option<DType> {
        use GgmlType::*;
        Some(match self {
            F32 => DType::F32,
            F16 => DType::F16,
            BF16 => DType::BF16,
            I32 => DType::I32,
            Q4_0 => DType::Q4_0,
            Q4_1 => DType::Q4_1,
            Q5_0 => DType::Q5_0,
            Q5_1 => DType::Q5_1,
            Q8_0 => DType::Q8_0,
            Q2_K => DType::Q2_K,
            Q3_K => DType::Q3_K,
            Q4_K => DType::Q4_K,
            Q5_K => DType::Q5_K,
            Q6_K => DType::Q6_K,
            _ => return None,
        })
    }

    /// The ggml type of an Ingot dtype, where GGUF has one.
    pub fn from_dtype(dtype: DType) -> Option<GgmlType> {
        dtype.ggml_type_id().and_then(GgmlType::from_id)
    }

    /// What a removed or unknown id was, for error messages.
    pub(crate) fn describe_unknown_id(id: u32) -> String {
        let removed = match id {
            4 => Some("Q4_2"),
            5 => Some("Q4_3"),
            31 => Some("Q4_0_4_4"),
            32 => Some("Q4_0_4_8"),
            33 => Some("Q4_0_8_8"),
            36 => Some("IQ4_NL_4_4"),
            37 => Some("IQ4_NL_4_8"),
            38 => Some("IQ4_NL_8_8"),
            _ => None,
        };
        match removed {
            Some(name) => format!("ggml type id {id} ({name}) was removed from ggml and is not valid in a GGUF file"),
            None => format!("unknown ggml type id {id}"),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert!(GgmlType::ALL[i + 1..].iter().all(|u| u.id() != t.id() && u.name() != t.name()));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
        assert!(GgmlType::describe_unknown_id(31).contains("Q4_0_4_4"));
    }

    #[test]
    fn geometry_agrees_with_core_dtypes() {
        for d in DType::ALL {
            let Some(t) = GgmlType::from_dtype(d) else { continue };
            assert_eq!(t.to_dtype(), Some(d), "{t}");
            assert_eq!(t.block_size(), d.block_size() as u64, "{t}");
            assert_eq!(t.type_size(), d.type_size() as u64, "{t}");
        }
        for t in GgmlType::ALL {
            if let Some(d) = t.to_dtype() {
                assert_eq!(GgmlType::from_dtype(d), Some(t));
            }
        }
    }

    #[test]
    fn bits_per_weight_as_ggml_documents() {
        let bpw = |t: GgmlType| t.type_size() as f64 * 8.0 / t.block_size() as f64;
        assert_eq!(bpw(GgmlType::Q8_K), 9.125);
        assert_eq!(bpw(GgmlType::IQ2_XXS), 2.0625);
        assert_eq!(bpw(GgmlType::IQ4_XS), 4.25);
        assert_eq!(bpw(GgmlType::IQ1_S), 1.5625);
        assert_eq!(bpw(GgmlType::MXFP4), 4.25);
        assert_eq!(bpw(GgmlType::TQ2_0), 2.0625);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
