//! Ingot's core vocabulary: element types ([`DType`]), host tensors ([`Tensor`]),
//! the parameter struct of every op ([`Op`]), the error type and the [`Backend`] trait.
//! Every other crate speaks in these terms; this crate depends on no other Ingot crate.

mod backend;
mod device;
mod dtype;
mod error;
pub mod ops;
mod ops_doc;
mod tensor;

pub use backend::{Backend, Precision};
pub use device::{
    check_into_outputs, check_reshape, run_on_host, run_on_host_guarded, Capture, Device, DeviceTensor, DeviceTensors, HostBytes,
};
pub use dtype::{DType, UnknownDType};
pub use error::{Error, Result};
pub use ops::*;
pub use ops_doc::{ops_doc, DocSection};
pub use tensor::{round_to, Tensor, Tensors};
