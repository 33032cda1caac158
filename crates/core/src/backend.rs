//! The `Backend` trait: run one op on host tensors. The golden checker drives every
//! backend through it; device-resident execution is [`crate::Device`], and a device's
//! `Backend` is the thin host wrapper [`crate::run_on_host`].

use crate::{Op, Result, Tensors};

/// How a backend computes an op, where that bounds how close its result can come to the
/// f64 reference. The golden check compares each output with the tolerance of the path
/// the backend reports (`docs/protocol.md`, "Comparison").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// The op's arithmetic in its dtype or wider, inputs read exactly.
    Standard,
    /// Activations rounded to 8-bit levels in blocks of 32 values (one f32 scale
    /// `max|x| / 127` per block) before integer dot products with block-format weights,
    /// as ggml does: `quantized_matmul` on the CPU device.
    Q8Activations,
}

impl Precision {
    /// Every path.
    pub const ALL: &'static [Precision] = &[Precision::Standard, Precision::Q8Activations];

    /// The path's name in `meta.json` (`path_tolerances`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Standard => "standard",
            Precision::Q8Activations => "q8_activations",
        }
    }
}

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

    /// The arithmetic path `op` takes on this backend.
    fn precision(&self, _op: &Op) -> Precision {
        Precision::Standard
    }

    /// Whether [`Backend::run_guarded`] checks for writes outside the outputs.
    fn guards_outputs(&self) -> bool {
        false
    }

    /// [`Backend::run`] with sentinel bytes around every output buffer and the inputs
    /// compared after the op: [`crate::Error::OutOfBounds`] when the op wrote outside
    /// its outputs. Backends that cannot guard (see [`Backend::guards_outputs`]) just run.
    fn run_guarded(&self, op: &Op, inputs: &Tensors) -> Result<Tensors> {
        self.run(op, inputs)
    }
}
