//! The golden cases, one file per op family (the family of [`ingot_core::for_each_op`]):
//! each op's input builder (`family::function`, called by [`crate::gen`]) and the family's
//! entries of the standard suite (`family::standard`, assembled by [`crate::suite`]).

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod cast;
pub(crate) mod copy;
pub(crate) mod embedding;
pub(crate) mod gemm;
pub(crate) mod kv;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod quant;
pub(crate) mod rope;
pub(crate) mod sampling;

/// The families' entries of the standard suite, in suite order.
pub(crate) const STANDARD: &[fn(&mut Vec<crate::suite::Entry>)] = &[
    gemm::standard,
    embedding::standard,
    norm::standard,
    activation::standard,
    sampling::standard,
    rope::standard,
    copy::standard,
    kv::standard,
    attention::standard,
    cast::standard,
    quant::standard,
    matmul::standard,
];

/// What every case file uses.
mod prelude {
    pub(crate) use crate::gen::{
        copy_tensor, dt, float, ins, limit, rounded, weight_tensor, well_posed, with_specials, Flags, Gen, MAX_ELEMENTS,
    };
    pub(crate) use crate::suite::{e, Entry};
    pub(crate) use crate::{Error, Result};
    pub(crate) use ingot_core::*;
    pub(crate) use ingot_cpu::sampling::{ranked, softmax_row};
    pub(crate) use rand::Rng;
}
