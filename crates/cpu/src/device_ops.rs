//! Which kernel runs each op on the [`crate::CpuDevice`], and the glue between device
//! tensors and those kernels. An op runs on a fast kernel ([`crate::fast`],
//! [`crate::paged`], [`crate::simd`]: f32 arithmetic, SIMD and threads, reading the
//! device's tensors in place) where [`fast_kernel`] says so, and on the f64 reference of
//! this crate otherwise, through host copies of its inputs and outputs. Both take the
//! same checks (parameters, shapes, every index), with the same error messages.
//! `docs/op-support.md` is generated from [`fast_kernel`].

use crate::device::{CpuTensor, View};
use ingot_core::{Backend, DType, Device, DeviceTensor, DeviceTensors, Error, Op, Precision, Result, Tensors};

/// Where the outputs of an op are allocated: plain tensors, or [`CpuTensor::guarded`] ones
/// (for [`ingot_core::Device::run_guarded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alloc {
    Plain,
    Guarded,
}

impl Alloc {
    /// A new output tensor of zeros.
    pub(crate) fn zeros(self, dtype: DType, shape: &[usize]) -> Result<CpuTensor> {
        match self {
            Alloc::Plain => crate::CpuDevice.zeros(dtype, shape),
            Alloc::Guarded => CpuTensor::guarded(dtype, shape),
        }
    }
}

pub(crate) type Tens = DeviceTensors<CpuTensor>;
pub(crate) type Kernel<'a> = Box<dyn FnOnce(&Tens, Alloc) -> Result<Tens> + 'a>;

/// The fast kernels, one function per family (`fast` in each family file: which op, for
/// which dtypes and parameters, runs on which kernel); an op none of them takes runs on
/// the reference.
const FAST: &[for<'a> fn(&'a Op) -> Option<Kernel<'a>>] = &[
    crate::matmul::fast,
    crate::embedding::fast,
    crate::quant::fast,
    crate::norm::fast,
    crate::activation::fast,
    crate::rope::fast,
    crate::sampling::fast,
    crate::cast::fast,
    crate::kv::fast,
    crate::attention::fast,
];

/// The in-place forms of [`run_into`], one function per family that has them (`run_into`
/// in the family file; `None` for an op or set of outputs it has no in-place form for).
const IN_PLACE: &[fn(&Op, &Tens, &Tens) -> Option<Result<Tens>>] = &[crate::kv::run_into, crate::copy::run_into];

/// The fast kernel of `op`, or `None` where the reference runs it.
fn fast_path(op: &Op) -> Option<Kernel<'_>> {
    FAST.iter().find_map(|f| f(op))
}

/// Whether the CPU device runs `op` (with its dtypes and parameters) on a fast kernel;
/// otherwise it runs the f64 reference. Per op rather than per [`ingot_core::OpKind`]:
/// several ops are fast for f32 only (the dtype models compute in).
pub fn fast_kernel(op: &Op) -> bool {
    fast_path(op).is_some()
}

/// The arithmetic path of `op` on the CPU device: `quantized_matmul` with block-format
/// weights rounds its activations to 8 bits ([`crate::simd`]); everything else is
/// [`Precision::Standard`].
pub fn precision(op: &Op) -> Precision {
    match op {
        Op::QuantizedMatmul(p) if p.weight_dtype.is_quantized() => Precision::Q8Activations,
        _ => Precision::Standard,
    }
}

/// Runs `op`, making new output tensors.
pub fn run(op: &Op, inputs: &Tens) -> Result<Tens> {
    run_kernel(op, inputs, Alloc::Plain, fast_path(op))
}

/// Runs `op` with every output in a [`CpuTensor::guarded`] buffer, and checks the guards:
/// [`Error::OutOfBounds`] when the op wrote outside an output.
pub fn run_guarded(op: &Op, inputs: &Tens) -> Result<Tens> {
    guarded(op, inputs, fast_path(op))
}

/// [`run_guarded`] with `kernel` (`None`: the reference).
fn guarded(op: &Op, inputs: &Tens, kernel: Option<Kernel>) -> Result<Tens> {
    let out = run_kernel(op, inputs, Alloc::Guarded, kernel)?;
    check_guards(op, &out)?;
    Ok(out)
}

/// [`Error::OutOfBounds`] for the first output in `out` whose guard was written.
pub(crate) fn check_guards(op: &Op, out: &Tens) -> Result<()> {
    for (name, t) in out {
        t.check_guard().map_err(|m| Error::OutOfBounds { op: op.name(), msg: format!("output '{name}', {m}") })?;
    }
    Ok(())
}

/// Checks `op` and its inputs and runs `kernel` (`None`: the reference through host copies).
fn run_kernel(op: &Op, inputs: &Tens, alloc: Alloc, kernel: Option<Kernel>) -> Result<Tens> {
    op.validate()?;
    check_inputs(op, inputs)?;
    match kernel {
        Some(kernel) => kernel(inputs, alloc),
        None => {
            let host: Tensors = inputs.iter().map(|(k, t)| Ok((k.clone(), t.to_host()?))).collect::<Result<_>>()?;
            let out = crate::CpuBackend.run(op, &host)?;
            out.into_iter()
                .map(|(k, t)| {
                    let d = alloc.zeros(t.dtype, &t.shape)?;
                    d.write()?.bytes().copy_from_slice(&t.data);
                    Ok((k, d))
                })
                .collect()
        }
    }
}

/// Runs `op` writing the outputs named in `outputs` in place (see `Device::run_into`).
pub fn run_into(op: &Op, inputs: &Tens, outputs: &mut Tens) -> Result<Tens> {
    op.validate()?;
    check_inputs(op, inputs)?;
    ingot_core::check_into_outputs(op, outputs)?;
    if let Some(done) = IN_PLACE.iter().find_map(|f| f(op, inputs, outputs)) {
        return done;
    }
    // Generic form: compute new outputs, then copy them into the given tensors.
    let mut fresh = run(op, inputs)?;
    for (name, dst) in outputs.iter() {
        let src = fresh.remove(name).ok_or_else(|| Error::invalid(op.name(), format!("no output '{name}'")))?;
        let from = src.bytes()?;
        dst.write()?.bytes().copy_from_slice(&from);
    }
    Ok(fresh)
}

/// Dtypes and shapes of `inputs` against the op's specs (values are the kernels' to check).
fn check_inputs(op: &Op, inputs: &Tens) -> Result<()> {
    let name = op.name();
    let specs = op.inputs();
    for s in &specs {
        let t = inputs.get(s.name).ok_or_else(|| Error::invalid(name, format!("missing input '{}'", s.name)))?;
        ingot_core::ensure!(t.dtype() == s.dtype, name, "'{}' has dtype {}, expected {}", s.name, t.dtype(), s.dtype);
        ingot_core::ensure!(t.shape() == s.shape.as_slice(), name, "'{}' has shape {:?}, expected {:?}", s.name, t.shape(), s.shape);
    }
    if let Some(extra) = inputs.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        return Err(Error::invalid(name, format!("unexpected input '{extra}' (inputs are {names:?})")));
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// An input by name (present: [`check_inputs`] ran first).
pub(crate) fn input<'a>(op: &'static str, inputs: &'a Tens, name: &str) -> Result<&'a CpuTensor> {
    inputs.get(name).ok_or_else(|| Error::invalid(op, format!("missing input '{name}'")))
}

/// A float tensor's elements as f32: borrowed for f32, widened (exactly) for f16 and bf16.
pub(crate) enum Floats<'a> {
    Borrowed(View<'a, f32>),
    Widened(Vec<f32>),
}

impl std::ops::Deref for Floats<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Floats::Borrowed(v) => v,
            Floats::Widened(v) => v,
        }
    }
}

pub(crate) fn floats(t: &CpuTensor) -> Result<Floats<'_>> {
    Ok(match t.dtype() {
        DType::F32 => Floats::Borrowed(t.view()?),
        DType::F16 => Floats::Widened(t.view::<u16>()?.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()),
        DType::BF16 => Floats::Widened(t.view::<u16>()?.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()),
        d => return Err(Error::invalid("cpu", format!("a float tensor was expected, got {d}"))),
    })
}

pub(crate) fn outs<const N: usize>(items: [(&str, CpuTensor); N]) -> Tens {
    items.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuDevice;
    use ingot_core::{
        AppendKvParams, CastParams, DecodeParams, EmbeddingParams, GatedParams, HostBytes, LogitsParams, PrefillParams,
        QuantizedMatmulParams, RmsNormParams, RopeParams, RowsParams, SoftmaxParams, Tensor, UnaryParams,
    };
    use std::sync::Arc;

    const F32: DType = DType::F32;

    fn up(t: Tensor) -> CpuTensor {
        CpuDevice.upload(&t).unwrap()
    }

    fn tens(items: Vec<(&str, Tensor)>) -> Tens {
        items.into_iter().map(|(n, t)| (n.to_string(), up(t))).collect()
    }

    fn host(out: &Tens) -> Tensors {
        out.iter().map(|(k, t)| (k.clone(), t.to_host().unwrap())).collect()
    }

    /// A kernel for an op with one output `output` of `dtype` [n] that writes 4 bytes at
    /// byte `at` from the output's start (negative: before it), as a kernel with an
    /// indexing bug would.
    fn sloppy(dtype: DType, n: usize, at: isize) -> Kernel<'static> {
        Box::new(move |_, alloc| {
            let out = alloc.zeros(dtype, &[n])?;
            {
                let (mut words, range) = out.raw_words().expect("an owned tensor");
                let i = (range.start as isize + at) as usize;
                bytemuck::cast_slice_mut::<u32, u8>(&mut words)[i..i + 4].copy_from_slice(&1.5f32.to_le_bytes());
            }
            Ok(outs([("output", out)]))
        })
    }

    #[test]
    fn guarded_run_catches_a_kernel_writing_outside_its_output() {
        let op = Op::Relu(UnaryParams { num_elements: 7, dtype: F32 });
        let ins = tens(vec![("input", Tensor::from_f32(F32, vec![7], &[1.0; 7]))]);
        for at in [0, 24] {
            assert!(guarded(&op, &ins, Some(sloppy(F32, 7, at))).is_ok(), "a write at byte {at} is inside");
        }
        for (at, want) in [
            (28, "4 bytes after its end (the nearest at end+0)"),
            (-4, "4 bytes before its start (the nearest at -1)"),
            (-64, "4 bytes before its start (the nearest at -61)"),
            (68, "4 bytes after its end (the nearest at end+40)"),
        ] {
            let e = guarded(&op, &ins, Some(sloppy(F32, 7, at))).unwrap_err();
            assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
            let e = e.to_string();
            assert!(e.starts_with("[relu] output 'output'") && e.contains(want), "byte {at}: {e}");
        }
        // 3 f16 values are 6 bytes: a whole-word store of the last one writes 2 bytes too many.
        let op = Op::Relu(UnaryParams { num_elements: 3, dtype: DType::F16 });
        let ins = tens(vec![("input", Tensor::from_f32(DType::F16, vec![3], &[1.0; 3]))]);
        let e = guarded(&op, &ins, Some(sloppy(DType::F16, 3, 4))).unwrap_err().to_string();
        assert!(e.contains("2 bytes after its end (the nearest at end+0)"), "{e}");
    }

    #[test]
    fn guarded_runs_of_the_kernels_pass_and_match_plain_runs() {
        let (t, h) = (3, 40);
        let x: Vec<f32> = (0..t * h).map(|i| (i as f32 * 0.37).sin()).collect();
        let op = Op::RmsNorm(RmsNormParams { num_tokens: t, hidden_size: h, eps: 1e-6, gemma: true, dtype: F32 });
        let ins = tens(vec![("input", Tensor::from_f32(F32, vec![t, h], &x)), ("weight", Tensor::from_f32(F32, vec![h], &x[..h]))]);
        assert_eq!(host(&run_guarded(&op, &ins).unwrap()), host(&run(&op, &ins).unwrap()));
        // The reference path allocates guarded outputs too.
        let op = Op::Gelu(UnaryParams { num_elements: t * h, dtype: F32 });
        let ins = tens(vec![("input", Tensor::from_f32(F32, vec![t * h], &x))]);
        assert!(!fast_kernel(&op));
        assert_eq!(host(&run_guarded(&op, &ins).unwrap()), host(&run(&op, &ins).unwrap()));
    }

    #[test]
    fn shared_weights_are_read_in_place() {
        let (m, n, k) = (3, 5, 64);
        let wv: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let xv: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0).collect();
        let q = crate::quant::quantize_row(DType::Q4_0, &wv).unwrap();
        // The weights at an odd offset of a larger buffer, as in a mapped GGUF file.
        let mut file = vec![7u8; 3];
        file.extend(&q);
        file.extend([9u8; 5]);
        let file: Arc<dyn HostBytes> = Arc::new(file);
        let shared = CpuDevice.upload_shared(DType::Q4_0, &[n, k], &file, 3..3 + q.len()).unwrap();
        assert_eq!(shared.bytes().unwrap().as_ptr(), file.host_bytes()[3..].as_ptr(), "the weights were copied");
        let owned = up(Tensor::from_bytes(DType::Q4_0, vec![n, k], q).unwrap());
        let op = Op::QuantizedMatmul(QuantizedMatmulParams { m, n, k, weight_dtype: DType::Q4_0, dtype: F32 });
        let x = up(Tensor::from_f32(F32, vec![m, k], &xv));
        let run_with = |w: &CpuTensor| host(&run(&op, &[("x".to_string(), x.clone()), ("w".to_string(), w.clone())].into()).unwrap());
        assert_eq!(run_with(&shared), run_with(&owned));
        assert_eq!(precision(&op), Precision::Q8Activations);
    }

    /// Compares the fast kernel's outputs with the reference's: NaN and ±Inf where the
    /// reference has them, else within `tol` (relative to max(1, |want|)).
    fn same_as_reference(op: &Op, ins: Vec<(&str, Tensor)>, tol: f32) {
        assert!(fast_kernel(op), "{} runs on the reference", op.name());
        let want = crate::CpuBackend.run(op, &ins.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()).unwrap();
        let got = host(&run(op, &tens(ins)).unwrap());
        for (name, w) in &want {
            let g = &got[name];
            if w.dtype == DType::I32 {
                assert_eq!(g, w, "{} {name}", op.name());
                continue;
            }
            for (i, (a, b)) in g.to_f32().unwrap().iter().zip(w.to_f32().unwrap()).enumerate() {
                let ok = if b.is_nan() {
                    a.is_nan()
                } else if b.is_infinite() {
                    *a == b
                } else {
                    (a - b).abs() <= tol * b.abs().max(1.0)
                };
                assert!(ok, "{} {name}[{i}]: got {a}, reference {b}", op.name());
            }
        }
    }

    #[test]
    fn special_values_take_the_reference_limits() {
        let gate = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -100.0, -1e20, 1e20, 0.0, -0.0, 3.0, -3.0];
        let upv = [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0, -1.0, 0.5];
        for op in [Op::SiluAndMul, Op::GeluAndMul] {
            let op = op(GatedParams { num_tokens: 2, intermediate_size: 5, dtype: F32, packed: false });
            let ins = vec![("gate", Tensor::from_f32(F32, vec![2, 5], &gate)), ("up", Tensor::from_f32(F32, vec![2, 5], &upv))];
            same_as_reference(&op, ins, 1e-6);
        }
        // Softmax rows: a masked logit, a +Inf (NaN row, as in the reference), a NaN, all −Inf.
        let ninf = f32::NEG_INFINITY;
        let logits = [1.0, ninf, 3.0, -2.0, 1.0, f32::INFINITY, 0.0, 0.0, f32::NAN, 1.0, 2.0, 3.0, ninf, ninf, ninf, ninf];
        let op = Op::Softmax(SoftmaxParams { num_tokens: 4, vocab_size: 4, temperature: 0.7, dtype: F32 });
        same_as_reference(&op, vec![("logits", Tensor::from_f32(F32, vec![4, 4], &logits))], 1e-6);
        // Argmax: ties go to the first index, NaN counts as largest, −0 equals +0.
        let logits = [1.0, 3.0, 3.0, -1.0, 2.0, f32::NAN, 5.0, f32::NAN, -0.0, 0.0, ninf, -1.0, ninf, ninf, ninf, ninf];
        let op = Op::Argmax(LogitsParams { num_tokens: 4, vocab_size: 4, dtype: F32 });
        same_as_reference(&op, vec![("logits", Tensor::from_f32(F32, vec![4, 4], &logits))], 0.0);
        // bf16 logits are widened exactly.
        let op = Op::Argmax(LogitsParams { num_tokens: 4, vocab_size: 4, dtype: DType::BF16 });
        same_as_reference(&op, vec![("logits", Tensor::from_f32(DType::BF16, vec![4, 4], &logits))], 0.0);
        // Casts round to nearest even and keep NaN and ±Inf.
        let v = [f32::NAN, f32::INFINITY, ninf, 70000.0, -0.0, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 3.0e-8];
        for (from, to) in [(F32, DType::F16), (F32, DType::BF16), (DType::F16, DType::BF16), (DType::BF16, F32), (DType::F16, DType::F16)] {
            let op = Op::Cast(CastParams { num_elements: v.len(), input_dtype: from, output_dtype: to });
            same_as_reference(&op, vec![("input", Tensor::from_f32(from, vec![v.len()], &v))], 0.0);
        }
        let op = Op::AddResidual(RowsParams { num_tokens: 1, hidden_size: 4, dtype: F32 });
        let ins = vec![
            ("input", Tensor::from_f32(F32, vec![1, 4], &[f32::MAX, ninf, 1.0, f32::NAN])),
            ("residual", Tensor::from_f32(F32, vec![1, 4], &[f32::MAX, 1.0, -1.0, 0.0])),
        ];
        same_as_reference(&op, ins, 0.0);
    }

    /// A decode batch over 4 pages of 2 slots: sequence 0 in pages [2, 0] (3 keys),
    /// sequence 1 in page [3] (2 keys); 2 query heads over 1 kv head of 4.
    fn decode_case() -> (Op, Vec<(&'static str, Tensor)>) {
        let p = DecodeParams {
            batch_size: 2,
            num_qo_heads: 2,
            num_kv_heads: 1,
            head_size: 4,
            page_size: 2,
            num_pages: 4,
            num_page_ids: 3,
            sm_scale: 0.5,
            window_left: -1,
            logits_soft_cap: 0.0,
            dtype: F32,
        };
        let cache = |s: f32| Tensor::from_f32(F32, vec![4, 2, 1, 4], &(0..32).map(|i| (i as f32 * s).sin()).collect::<Vec<_>>());
        let ins = vec![
            ("q", Tensor::from_f32(F32, vec![2, 2, 4], &(0..16).map(|i| (i as f32 * 0.7).cos()).collect::<Vec<_>>())),
            ("k_cache", cache(0.3)),
            ("v_cache", cache(0.9)),
            ("kv_indices", Tensor::from_i32(vec![3], &[2, 0, 3])),
            ("kv_indptr", Tensor::from_i32(vec![3], &[0, 2, 3])),
            ("kv_last_page_len", Tensor::from_i32(vec![2], &[1, 2])),
        ];
        (Op::BatchDecodeWithPagedKvCache(p), ins)
    }

    fn with(mut ins: Vec<(&'static str, Tensor)>, name: &str, t: Tensor) -> Vec<(&'static str, Tensor)> {
        ins.iter_mut().find(|(n, _)| *n == name).expect("an input of the case").1 = t;
        ins
    }

    #[test]
    fn attention_matches_the_reference_with_lse() {
        let (op, ins) = decode_case();
        same_as_reference(&op, ins.clone(), 2e-6);
        let Op::BatchDecodeWithPagedKvCache(p) = &op else { unreachable!() };
        let windowed = Op::BatchDecodeWithPagedKvCache(DecodeParams { window_left: 1, logits_soft_cap: 0.3, ..p.clone() });
        same_as_reference(&windowed, ins.clone(), 2e-6);
        // Prefill of the last two positions of sequence 0 and the last one of sequence 1.
        let pp = PrefillParams {
            batch_size: 2,
            num_tokens: 3,
            num_qo_heads: 2,
            num_kv_heads: 1,
            head_size: 4,
            page_size: 2,
            num_pages: 4,
            num_page_ids: 3,
            causal: true,
            sm_scale: 0.5,
            window_left: -1,
            logits_soft_cap: 0.0,
            dtype: F32,
        };
        let q = Tensor::from_f32(F32, vec![3, 2, 4], &(0..24).map(|i| (i as f32 * 0.4).sin()).collect::<Vec<_>>());
        let mut pins = with(ins, "q", q);
        pins.push(("qo_indptr", Tensor::from_i32(vec![3], &[0, 2, 3])));
        same_as_reference(&Op::BatchPrefillWithPagedKvCache(pp.clone()), pins.clone(), 2e-6);
        // Non-causal prefill is the reference's.
        assert!(!fast_kernel(&Op::BatchPrefillWithPagedKvCache(PrefillParams { causal: false, ..pp.clone() })));
        // More queries than keys is an error, not a panic.
        let bad = with(pins, "qo_indptr", Tensor::from_i32(vec![3], &[0, 0, 3]));
        let e = run(&Op::BatchPrefillWithPagedKvCache(pp), &tens(bad)).unwrap_err().to_string();
        assert!(e.contains("causal sequence 1 has 3 queries but only 2 keys"), "{e}");
    }

    #[test]
    fn bad_tables_and_ids_are_errors_not_panics() {
        let (op, ins) = decode_case();
        for (name, t, want) in [
            ("kv_indices", Tensor::from_i32(vec![3], &[2, 4, 3]), "kv_indices[1] = 4 is outside 0..4 pages"),
            ("kv_indices", Tensor::from_i32(vec![3], &[2, -1, 3]), "kv_indices[1] = -1 is outside 0..4 pages"),
            ("kv_indptr", Tensor::from_i32(vec![3], &[0, 2, 4]), "kv_indptr[2] = 4 exceeds num_page_ids 3"),
            ("kv_indptr", Tensor::from_i32(vec![3], &[0, 2, 2]), "sequence 1 has no page"),
            ("kv_last_page_len", Tensor::from_i32(vec![2], &[0, 2]), "kv_last_page_len[0] = 0 is outside 1..=2"),
            ("kv_last_page_len", Tensor::from_i32(vec![2], &[1, 3]), "kv_last_page_len[1] = 3 is outside 1..=2"),
        ] {
            let e = run(&op, &tens(with(ins.clone(), name, t))).unwrap_err().to_string();
            assert!(e.starts_with("[batch_decode_with_paged_kv_cache]") && e.contains(want), "{e}");
        }
        let p = EmbeddingParams { num_tokens: 2, hidden_size: 32, vocab_size: 3, dtype: DType::Q8_0 };
        let table = crate::quant::quantize_row(DType::Q8_0, &[0.5; 96]).unwrap();
        for id in [3, -1] {
            let ins = vec![
                ("table", Tensor::from_bytes(DType::Q8_0, vec![3, 32], table.clone()).unwrap()),
                ("ids", Tensor::from_i32(vec![2], &[0, id])),
            ];
            let e = run(&Op::EmbeddingLookup(p.clone()), &tens(ins)).unwrap_err().to_string();
            assert!(e.contains(&format!("ids[1] = {id} is outside 0..3")), "{e}");
        }
        let rp = RopeParams {
            num_tokens: 2,
            num_heads: 1,
            num_kv_heads: 1,
            head_size: 4,
            rotary_dim: 4,
            rope_theta: 1e4,
            interleave: false,
            rope_factor: 1.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
            dtype: F32,
        };
        let ins = vec![
            ("q", Tensor::from_f32(F32, vec![2, 1, 4], &[1.0; 8])),
            ("k", Tensor::from_f32(F32, vec![2, 1, 4], &[1.0; 8])),
            ("pos_ids", Tensor::from_i32(vec![2], &[5, -3])),
        ];
        let e = run(&Op::Rope(rp), &tens(ins)).unwrap_err().to_string();
        assert!(e.contains("pos_ids[1] = -3 is negative"), "{e}");
    }

    /// The ops a model launches run on fast kernels for f32 (and any weight format);
    /// the f16/bf16 forms of the f32-only kernels fall back to the reference.
    #[test]
    fn model_ops_are_fast_in_f32() {
        let (decode, _) = decode_case();
        let rows = |dtype| RowsParams { num_tokens: 2, hidden_size: 4, dtype };
        let norm = |dtype| RmsNormParams { num_tokens: 2, hidden_size: 4, eps: 1e-6, gemma: false, dtype };
        let gated = |dtype| GatedParams { num_tokens: 2, intermediate_size: 4, dtype, packed: false };
        let append = AppendKvParams {
            batch_size: 1,
            num_tokens: 1,
            num_kv_heads: 1,
            head_size: 4,
            page_size: 2,
            num_pages: 1,
            num_page_ids: 1,
            dtype: DType::F16,
        };
        let mut fast = vec![
            decode,
            Op::AddResidual(rows(F32)),
            Op::RmsNorm(norm(F32)),
            Op::SiluAndMul(gated(F32)),
            Op::GeluAndMul(gated(F32)),
            Op::AppendPagedKvCache(append),
            Op::Cast(CastParams { num_elements: 4, input_dtype: DType::F16, output_dtype: F32 }),
        ];
        for w in DType::WEIGHTS {
            fast.push(Op::QuantizedMatmul(QuantizedMatmulParams { m: 1, n: 1, k: 256, weight_dtype: w, dtype: F32 }));
            fast.push(Op::EmbeddingLookup(EmbeddingParams { num_tokens: 1, hidden_size: 256, vocab_size: 1, dtype: w }));
        }
        for op in &fast {
            assert!(fast_kernel(op), "{op:?} runs on the reference");
        }
        for op in [Op::AddResidual(rows(DType::F16)), Op::RmsNorm(norm(DType::BF16)), Op::SiluAndMul(gated(DType::F16))] {
            assert!(!fast_kernel(&op), "{op:?} has no fast kernel");
        }
    }
}
