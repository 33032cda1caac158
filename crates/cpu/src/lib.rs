//! The CPU backend. Every op has a reference here written for clarity: inputs are
//! read exactly as f64, arithmetic is done in f64, and each output is rounded once to
//! its dtype. This is the oracle of the golden protocol and of every other backend.
//!
//! Semantics are those of `docs/ops.md`; parameter structs live in `ingot-core`.

pub mod activation;
pub mod attention;
pub mod cast;
pub mod copy;
pub mod device;
pub mod device_ops;
pub mod embedding;
pub mod fast;
pub mod gemm;
pub mod kv;
pub mod matmul;
pub mod norm;
pub mod paged;
pub mod quant;
pub mod rope;
pub mod sampling;
pub mod simd;
pub mod util;

use ingot_core::{Backend, Error, Op, Result, Tensors};

pub use device::{CpuDevice, CpuTensor};

/// The CPU reference backend (`--backend reference`): every op in f64, the oracle. The
/// CPU device models run on is [`CpuDevice`] (`--backend cpu`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "reference".to_string()
    }

    fn supports(&self, _op: &Op) -> bool {
        true
    }

    fn run(&self, op: &Op, inputs: &Tensors) -> Result<Tensors> {
        op.check_inputs(inputs)?;
        reference(op, inputs)
    }
}

/// Generates [`reference`] from the op list: `family::function` of each op is its f64
/// reference in this crate.
macro_rules! reference {
    ($( $(#[doc = $doc:literal])* $variant:ident $name:literal ($params:ty) $family:ident :: $func:ident in $section:ident $spec:literal; )*) => {
        /// The f64 reference of `op` (inputs checked by the caller).
        fn reference(op: &Op, inputs: &Tensors) -> Result<Tensors> {
            match op {
                $( Op::$variant(p) => $family::$func(p, inputs), )*
            }
        }
    };
}
ingot_core::for_each_op!(reference);

/// Use `n` worker threads for the CPU fast path (rayon's global pool, built once and
/// kept: no thread is spawned per op). Call it before any parallel work; calling it
/// again with the same count is fine. Errors for 0, when the threads cannot be started
/// (the operating system refused one: a memory or process limit), or when the pool
/// already runs with another count (it was started by an earlier call or by the first
/// parallel op). Never panics.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("threads", "the thread count must be at least 1"));
    }
    match rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
        Ok(()) => Ok(()),
        // An I/O error (its source) is a thread that could not be spawned: the global pool
        // is still not built, and asking rayon anything about it (current_num_threads)
        // would build a default pool in its place and panic if that fails too.
        Err(e) if std::error::Error::source(&e).is_some() => {
            Err(Error::invalid("threads", format!("cannot start {n} CPU worker threads: {e}")))
        }
        // Otherwise the pool already runs, so asking for its size is safe.
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(Error::invalid(
            "threads",
            format!("cannot use {n} threads: the thread pool already runs with {} ({e})", rayon::current_num_threads()),
        )),
    }
}

/// Run `f` on a worker thread of the CPU fast path's pool and return its result (the
/// calling thread waits). A model forward pass, or a whole generation loop, run this
/// way issues its parallel ops from inside the pool: the issuing worker takes part in
/// each op and the hand-off to the other workers is a work-stealing queue, instead of
/// the calling thread sleeping and being woken once per op (on a 2-core machine that
/// was about a quarter of the decode time of a small model). Already on a worker, it
/// just calls `f`.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope ran the closure")
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_pool_runs_on_a_worker_and_returns_the_result() {
        assert_eq!(rayon::current_thread_index(), None);
        let (on_worker, v) = super::in_pool(|| (rayon::current_thread_index().is_some(), 42));
        assert!(on_worker);
        assert_eq!(v, 42);
        // Nested: already on a worker.
        assert_eq!(super::in_pool(|| super::in_pool(|| 7)), 7);
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(super::set_threads(0).is_err());
    }
}
