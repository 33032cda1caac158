//! The `Backend` trait: run one op on host tensors. The golden checker drives every
//! backend through it; device-resident execution comes with the GPU backend.

use crate::{Op, Result, Tensors};

/// A set of kernels that can run protocol ops.
pub trait Backend {
    /// Short name, as given to `--backend` (`cpu`, `gpu:wgpu`, ...).
    fn name(&self) -> String;

    /// Whether the backend implements this op for its dtypes. A backend returns
    /// [`crate::Error::Unsupported`] from [`Backend::run`] exactly when this is false.
    fn supports(&self, op: &Op) -> bool;

    /// Run `op` on `inputs` (checked against [`Op::inputs`]) and return every tensor
    /// of [`Op::outputs`].
    fn run(&self, op: &Op, inputs: &Tensors) -> Result<Tensors>;
}
