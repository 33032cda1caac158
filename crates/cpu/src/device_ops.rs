//! Which kernel runs each op on the [`crate::CpuDevice`], and the glue between device
//! tensors and those kernels. An op runs on a fast kernel ([`crate::fast`],
//! [`crate::paged`], [`crate::simd`]: f32 arithmetic, SIMD and threads, reading the
//! device's tensors in place) where [`fast_kernel`] says so, and on the f64 reference of
//! this crate otherwise, through host copies of its inputs and outputs. Both take the
//! same checks (parameters, shapes, every index), with the same error messages.
//! `docs/op-support.md` is generated from [`fast_kernel`].

use crate::device::{CpuTensor, View};
use crate::fast::{self, WeightView};
use crate::paged::{self, PagedKv, QueryRow};
use ingot_core::{Backend, DType, Device, DeviceTensor, DeviceTensors, Error, Op, Precision, Result, Tensors};
use rayon::prelude::*;

/// Where the outputs of an op are allocated: plain tensors, or [`CpuTensor::guarded`] ones
/// (for [`ingot_core::Device::run_guarded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alloc {
    Plain,
    Guarded,
}

impl Alloc {
    /// A new output tensor of zeros.
    fn zeros(self, dtype: DType, shape: &[usize]) -> Result<CpuTensor> {
        match self {
            Alloc::Plain => crate::CpuDevice.zeros(dtype, shape),
            Alloc::Guarded => CpuTensor::guarded(dtype, shape),
        }
    }
}

type Tens = DeviceTensors<CpuTensor>;
type Kernel<'a> = Box<dyn FnOnce(&Tens, Alloc) -> Result<Tens> + 'a>;

/// The fast kernel of `op`, or `None` where the reference runs it. The one list of which
/// op, for which dtypes and parameters, is fast.
fn fast_path(op: &Op) -> Option<Kernel<'_>> {
    use DType::F32;
    Some(match op {
        Op::QuantizedMatmul(p) => Box::new(move |i, a| quantized_matmul(p, i, a)),
        Op::EmbeddingLookup(p) => Box::new(move |i, a| embedding_lookup(p, i, a)),
        Op::Dequantize(p) => Box::new(move |i, a| dequantize(p, i, a)),
        Op::RmsNorm(p) if p.dtype == F32 => Box::new(move |i, a| rms_norm(p, i, a)),
        Op::FusedAddRmsNorm(p) if p.dtype == F32 => Box::new(move |i, a| fused_add_rms_norm(p, i, a)),
        Op::AddResidual(p) if p.dtype == F32 => Box::new(move |i, a| add_residual(p, i, a)),
        Op::SiluAndMul(p) if p.dtype == F32 => Box::new(move |i, a| gated("silu_and_mul", p, fast::silu, i, a)),
        Op::GeluAndMul(p) if p.dtype == F32 => Box::new(move |i, a| gated("gelu_and_mul", p, fast::gelu_tanh, i, a)),
        Op::Rope(p) if p.dtype == F32 => Box::new(move |i, a| rope(p, i, a)),
        Op::RopeFreqs(p) if p.dtype == F32 => Box::new(move |i, a| rope_freqs(p, i, a)),
        Op::AddBias(p) if p.dtype == F32 => Box::new(move |i, a| add_bias(p, i, a)),
        Op::Scale(p) if p.dtype == F32 => Box::new(move |i, a| scale(p, i, a)),
        Op::Softmax(p) => Box::new(move |i, a| softmax(p, i, a)),
        Op::Argmax(p) => Box::new(move |i, a| argmax(p, i, a)),
        Op::Cast(p) => Box::new(move |i, a| cast(p, i, a)),
        Op::AppendPagedKvCache(p) => Box::new(move |i, a| append(p, i, a)),
        Op::BatchDecodeWithPagedKvCache(p) if p.dtype == F32 => Box::new(move |i, a| decode(p, i, a)),
        Op::BatchPrefillWithPagedKvCache(p) if p.dtype == F32 && p.causal => Box::new(move |i, a| prefill(p, i, a)),
        _ => return None,
    })
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
    match op {
        Op::AppendPagedKvCache(p) if outputs.contains_key("k_cache_out") && outputs.contains_key("v_cache_out") => {
            append_in_place(p, inputs, &outputs["k_cache_out"], &outputs["v_cache_out"])?;
            Ok(Tens::new())
        }
        // The page copies inside `cache_out` (the `cache` input is not read: it may be the
        // same tensor). Index lists are read before the write lock is taken.
        Op::CopyPages(p) if outputs.contains_key("cache_out") => {
            let src = inputs["src_pages"].with_i32(<[i32]>::to_vec)?;
            let dst = inputs["dst_pages"].with_i32(<[i32]>::to_vec)?;
            p.check_pages(op.name(), &src, &dst)?;
            crate::copy::copy_pages_in_place(p, &src, &dst, outputs["cache_out"].write()?.bytes())?;
            Ok(DeviceTensors::new())
        }
        // `src` written into the columns of `output` (the `dst` input is not read: it may be
        // the same tensor); src is copied out first, in case it shares storage too.
        Op::WriteColumns(p) if outputs.contains_key("output") => {
            let src = inputs["src"].bytes()?.to_vec();
            crate::copy::write_columns_in_place(p, &src, outputs["output"].write()?.bytes())?;
            Ok(DeviceTensors::new())
        }
        _ => {
            // Generic form: compute new outputs, then copy them into the given tensors.
            let mut fresh = run(op, inputs)?;
            for (name, dst) in outputs.iter() {
                let src = fresh.remove(name).ok_or_else(|| Error::invalid(op.name(), format!("no output '{name}'")))?;
                let from = src.bytes()?;
                dst.write()?.bytes().copy_from_slice(&from);
            }
            Ok(fresh)
        }
    }
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
fn input<'a>(op: &'static str, inputs: &'a Tens, name: &str) -> Result<&'a CpuTensor> {
    inputs.get(name).ok_or_else(|| Error::invalid(op, format!("missing input '{name}'")))
}

/// A float tensor's elements as f32: borrowed for f32, widened (exactly) for f16 and bf16.
enum Floats<'a> {
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

fn floats(t: &CpuTensor) -> Result<Floats<'_>> {
    Ok(match t.dtype() {
        DType::F32 => Floats::Borrowed(t.view()?),
        DType::F16 => Floats::Widened(t.view::<u16>()?.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()),
        DType::BF16 => Floats::Widened(t.view::<u16>()?.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()),
        d => return Err(Error::invalid("cpu", format!("a float tensor was expected, got {d}"))),
    })
}

fn outs<const N: usize>(items: [(&str, CpuTensor); N]) -> Tens {
    items.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

// ---------------------------------------------------------------- weights

/// y = x·Wᵀ by [`fast::matmul_xwt`] over the weight's bytes where they are (a mapped file:
/// no copy); f16/bf16 activations are widened to f32 first.
fn quantized_matmul(p: &ingot_core::QuantizedMatmulParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "quantized_matmul";
    let x = floats(input(op, ins, "x")?)?;
    let w = input(op, ins, "w")?.bytes()?;
    let w = WeightView::new(p.weight_dtype, p.n, p.k, &w)?;
    let y = alloc.zeros(DType::F32, &[p.m, p.n])?;
    fast::matmul_xwt(&x, p.m, &w, y.write()?.f32());
    Ok(outs([("y", y)]))
}

/// Rows `ids` of the table: float rows copied bit for bit, block rows decoded to f32 by the
/// dequantizers the reference uses (bit-exact with ggml).
fn embedding_lookup(p: &ingot_core::EmbeddingParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    const OP: &str = "embedding_lookup";
    let ids = input(OP, ins, "ids")?.view::<i32>()?;
    for (i, &id) in ids.iter().enumerate() {
        ingot_core::ensure!(id >= 0 && (id as usize) < p.vocab_size, OP, "ids[{i}] = {id} is outside 0..{}", p.vocab_size);
    }
    let table = input(OP, ins, "table")?.bytes()?;
    let h = p.hidden_size;
    let row_bytes = p.dtype.bytes_for(h).ok_or_else(|| Error::invalid(OP, "hidden_size is not whole blocks"))?;
    let row = |id: i32| &table[id as usize * row_bytes..(id as usize + 1) * row_bytes];
    if p.dtype.is_float() {
        let out = alloc.zeros(p.dtype, &[p.num_tokens, h])?;
        for (dst, &id) in out.write()?.bytes().chunks_exact_mut(row_bytes).zip(ids.iter()) {
            dst.copy_from_slice(row(id));
        }
        return Ok(outs([("output", out)]));
    }
    let out = alloc.zeros(DType::F32, &[p.num_tokens, h])?;
    out.write()?
        .f32()
        .par_chunks_mut(h)
        .zip(ids.par_iter())
        .try_for_each(|(dst, &id)| crate::quant::dequantize_row(p.dtype, row(id), dst))?;
    Ok(outs([("output", out)]))
}

/// The rows decoded to f32, as [`embedding_lookup`] decodes them.
fn dequantize(p: &ingot_core::DequantizeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "dequantize";
    let src = input(op, ins, "input")?.bytes()?;
    let row_bytes = p.dtype.bytes_for(p.cols).ok_or_else(|| Error::invalid("dequantize", "cols is not whole blocks"))?;
    let out = alloc.zeros(DType::F32, &[p.rows, p.cols])?;
    out.write()?
        .f32()
        .par_chunks_mut(p.cols)
        .zip(src.par_chunks(row_bytes))
        .try_for_each(|(dst, row)| crate::quant::dequantize_row(p.dtype, row, dst))?;
    Ok(outs([("output", out)]))
}

// ---------------------------------------------------------------- norms and element-wise

fn rms_norm(p: &ingot_core::RmsNormParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rms_norm";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let w = input(op, ins, "weight")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    fast::rms_norm_into(&x, &w, p.eps, p.gemma, out.write()?.f32());
    Ok(outs([("output", out)]))
}

/// residual_out = input + residual (rounded to f32, as stored), output = rms_norm(residual_out).
fn fused_add_rms_norm(p: &ingot_core::RmsNormParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "fused_add_rms_norm";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let r = input(op, ins, "residual")?.view::<f32>()?;
    let w = input(op, ins, "weight")?.view::<f32>()?;
    let shape = [p.num_tokens, p.hidden_size];
    let (sum, out) = (alloc.zeros(DType::F32, &shape)?, alloc.zeros(DType::F32, &shape)?);
    {
        let mut s = sum.write()?;
        let s = s.f32();
        fast::zip_into(&x, &r, s, |a, b| a + b);
        fast::rms_norm_into(s, &w, p.eps, p.gemma, out.write()?.f32());
    }
    Ok(outs([("output", out), ("residual_out", sum)]))
}

fn add_residual(p: &ingot_core::RowsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "add_residual";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let r = input(op, ins, "residual")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    fast::zip_into(&x, &r, out.write()?.f32(), |a, b| a + b);
    Ok(outs([("output", out)]))
}

/// input + bias on every row, in f32.
fn add_bias(p: &ingot_core::RowsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "add_bias";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let b = input(op, ins, "bias")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    let mut w = out.write()?;
    for (o, x) in w.f32().chunks_exact_mut(p.hidden_size).zip(x.chunks_exact(p.hidden_size)) {
        for ((o, &x), &b) in o.iter_mut().zip(x).zip(b.iter()) {
            *o = x + b;
        }
    }
    drop(w);
    Ok(outs([("output", out)]))
}

/// input · scale, the scale rounded to f32 first (one f32 product: the reference's f64
/// product of two f32 values rounded once is the same number).
fn scale(p: &ingot_core::ScaleParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let x = input("scale", ins, "input")?.view::<f32>()?;
    let s = p.scale as f32;
    let out = alloc.zeros(DType::F32, &[p.num_elements])?;
    out.write()?.f32().iter_mut().zip(x.iter()).for_each(|(o, &x)| *o = x * s);
    Ok(outs([("output", out)]))
}

/// Rotary embedding with the caller's inverse frequencies: each angle pos·f in f64, its cos
/// and sin rounded to f32, the rotation in f32 (as [`rope`]).
fn rope_freqs(p: &ingot_core::RopeFreqsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rope_freqs";
    let pos = input(op, ins, "pos_ids")?.view::<i32>()?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid(op, format!("pos_ids[{t}] = {id} is negative")));
    }
    let inv = input(op, ins, "inv_freq")?.view::<f32>()?;
    if let Some((i, f)) = inv.iter().enumerate().find(|(_, f)| !f.is_finite()) {
        return Err(Error::invalid(op, format!("inv_freq[{i}] = {f} is not finite")));
    }
    let (heads, d) = (p.num_heads, p.head_size);
    let x = input(op, ins, "input")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, heads, d])?;
    let mut w = out.write()?;
    let o = w.f32();
    o.copy_from_slice(&x);
    let token = |cs: &mut Vec<(f32, f32)>, (row, &pos): (&mut [f32], &i32)| {
        fast::rope_angles(pos as usize, inv.iter().map(|&f| f as f64), cs);
        fast::rope_rotate(row, d, cs, !p.interleave);
    };
    if o.len() >= 1 << 15 {
        o.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each_init(Vec::new, token);
    } else {
        let mut cs = Vec::with_capacity(inv.len());
        o.chunks_mut(heads * d).zip(pos.iter()).for_each(|r| token(&mut cs, r));
    }
    drop(w);
    Ok(outs([("output", out)]))
}

/// act(gate)·up in f32 ([`fast::silu`], [`fast::gelu_tanh`]).
fn gated(op: &'static str, p: &ingot_core::GatedParams, act: fn(f32) -> f32, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let g = input(op, ins, "gate")?.view::<f32>()?;
    let u = input(op, ins, "up")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.intermediate_size])?;
    fast::zip_into(&g, &u, out.write()?.f32(), |g, u| act(g) * u);
    Ok(outs([("output", out)]))
}

/// Rotary embedding with the op's inverse frequencies (in f64, Llama 3.1 scaling
/// included); each angle pos·f in f64, its cos and sin rounded to f32, the rotation in f32.
fn rope(p: &ingot_core::RopeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rope";
    let pos = input(op, ins, "pos_ids")?.view::<i32>()?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid("rope", format!("pos_ids[{t}] = {id} is negative")));
    }
    let inv = crate::rope::inv_freqs(p);
    let (t, d) = (p.num_tokens, p.head_size);
    let rotate = |name: &str, heads: usize| -> Result<CpuTensor> {
        let x = input(op, ins, name)?.view::<f32>()?;
        let out = alloc.zeros(DType::F32, &[t, heads, d])?;
        let mut w = out.write()?;
        let o = w.f32();
        o.copy_from_slice(&x);
        let token = |cs: &mut Vec<(f32, f32)>, (row, &pos): (&mut [f32], &i32)| {
            fast::rope_angles(pos as usize, inv.iter().copied(), cs);
            fast::rope_rotate(row, d, cs, !p.interleave);
        };
        if o.len() >= 1 << 15 {
            o.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each_init(Vec::new, token);
        } else {
            let mut cs = Vec::with_capacity(inv.len());
            o.chunks_mut(heads * d).zip(pos.iter()).for_each(|r| token(&mut cs, r));
        }
        drop(w);
        Ok(out)
    };
    Ok(outs([("q_out", rotate("q", p.num_heads)?), ("k_out", rotate("k", p.num_kv_heads)?)]))
}

// ---------------------------------------------------------------- logits

fn softmax(p: &ingot_core::SoftmaxParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "softmax";
    let x = floats(input(op, ins, "logits")?)?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.vocab_size])?;
    fast::softmax_rows(&x, p.vocab_size, p.temperature as f32, out.write()?.f32());
    Ok(outs([("probs", out)]))
}

fn argmax(p: &ingot_core::LogitsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "argmax";
    let x = floats(input(op, ins, "logits")?)?;
    let out = alloc.zeros(DType::I32, &[p.num_tokens])?;
    fast::argmax_rows(&x, p.vocab_size, out.write()?.elems::<i32>());
    Ok(outs([("indices", out)]))
}

/// f32/f16/bf16 to f32/f16/bf16, round to nearest even (every f16 and bf16 value is exact
/// in f32, so going through f32 rounds once); the same dtype is a copy.
fn cast(p: &ingot_core::CastParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "cast";
    let src = input(op, ins, "input")?;
    let out = alloc.zeros(p.output_dtype, &[p.num_elements])?;
    {
        let mut w = out.write()?;
        if p.input_dtype == p.output_dtype {
            w.bytes().copy_from_slice(&src.bytes()?);
        } else {
            let x = floats(src)?;
            match p.output_dtype {
                DType::F32 => w.f32().copy_from_slice(&x),
                DType::F16 => w.elems::<u16>().iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = half::f16::from_f32(v).to_bits()),
                _ => w.elems::<u16>().iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = half::bf16::from_f32(v).to_bits()),
            }
        }
    }
    Ok(outs([("output", out)]))
}

// ---------------------------------------------------------------- paged KV cache

/// New caches: copies of the inputs with the rows appended.
fn append(p: &ingot_core::AppendKvParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "append_paged_kv_cache";
    let copy = |name: &str| -> Result<CpuTensor> {
        let src = input(op, ins, name)?;
        let dst = alloc.zeros(src.dtype(), src.shape())?;
        dst.write()?.bytes().copy_from_slice(&src.bytes()?);
        Ok(dst)
    };
    let (k, v) = (copy("k_cache")?, copy("v_cache")?);
    append_in_place(p, ins, &k, &v)?;
    Ok(outs([("k_cache_out", k), ("v_cache_out", v)]))
}

/// `append_paged_kv_cache` writing into the caches `k` and `v` (the `k_cache`/`v_cache`
/// inputs are not read: they may be the same tensors).
fn append_in_place(p: &ingot_core::AppendKvParams, inputs: &Tens, k: &CpuTensor, v: &CpuTensor) -> Result<()> {
    let op = "append_paged_kv_cache";
    let tables: Tensors = ["batch_indices", "positions", "kv_indices", "kv_indptr", "kv_last_page_len"]
        .into_iter()
        .map(|n| Ok((n.to_string(), input(op, inputs, n)?.to_host()?)))
        .collect::<Result<_>>()?;
    let targets = crate::attention::append_targets(p, &tables)?;
    for (cache, rows) in [(k, "append_k"), (v, "append_v")] {
        let src = input(op, inputs, rows)?.bytes()?;
        let row_bytes = src.len() / p.num_tokens;
        let mut dst = cache.write()?;
        let dst = dst.bytes();
        for (row, &(page, slot)) in src.chunks_exact(row_bytes).zip(&targets) {
            let at = (page * p.page_size + slot) * row_bytes;
            dst[at..at + row_bytes].copy_from_slice(row);
        }
    }
    Ok(())
}

/// The shared part of decode and prefill: the checked page table, the query rows it
/// yields, and [`paged::paged_attention_into`] writing `output` and `lse`.
struct Paged<'a> {
    op: &'static str,
    ins: &'a Tens,
    hq: usize,
    hk: usize,
    d: usize,
    page_size: usize,
    num_pages: usize,
    sm_scale: f64,
    window_left: i64,
    cap: f64,
}

impl Paged<'_> {
    /// Attends the query rows: `rows(seqs)` gives, from the checked sequences, each query
    /// row's (sequence, position) in the order of `q`.
    fn run(&self, alloc: Alloc, rows: impl FnOnce(&[crate::attention::SeqPages]) -> Result<Vec<(usize, usize)>>) -> Result<Tens> {
        let (indptr, indices, last) = (
            input(self.op, self.ins, "kv_indptr")?.view::<i32>()?,
            input(self.op, self.ins, "kv_indices")?.view::<i32>()?,
            input(self.op, self.ins, "kv_last_page_len")?.view::<i32>()?,
        );
        let seqs = crate::attention::page_table(self.op, &indptr, &indices, &last, self.page_size, self.num_pages)?;
        // Every page id was checked to lie in 0..num_pages: the same bits as u32.
        let pages: &[u32] = bytemuck::cast_slice(&indices);
        let rows: Vec<QueryRow> = rows(&seqs)?.into_iter().map(|(b, pos)| QueryRow { pages: &pages[seqs[b].pages.clone()], pos }).collect();
        let q = input(self.op, self.ins, "q")?.view::<f32>()?;
        let k = input(self.op, self.ins, "k_cache")?.view::<f32>()?;
        let v = input(self.op, self.ins, "v_cache")?.view::<f32>()?;
        let kv = PagedKv { k: &k, v: &v, page_size: self.page_size, n_kv: self.hk, head_dim: self.d };
        let out = alloc.zeros(DType::F32, &[rows.len(), self.hq, self.d])?;
        let lse = alloc.zeros(DType::F32, &[rows.len(), self.hq])?;
        // window_left = w: keys at positions ≥ pos − w, a window of w + 1 keys.
        let window = usize::try_from(self.window_left).ok().map(|w| w.saturating_add(1));
        paged::paged_attention_into(
            &q,
            &rows,
            &kv,
            self.hq,
            self.sm_scale as f32,
            window,
            self.cap as f32,
            out.write()?.f32(),
            Some(lse.write()?.f32()),
        );
        Ok(outs([("output", out), ("lse", lse)]))
    }
}

fn decode(p: &ingot_core::DecodeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let a = Paged {
        op: "batch_decode_with_paged_kv_cache",
        ins,
        hq: p.num_qo_heads,
        hk: p.num_kv_heads,
        d: p.head_size,
        page_size: p.page_size,
        num_pages: p.num_pages,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        cap: p.logits_soft_cap,
    };
    // One query per sequence, at its last position (kv_len ≥ 1).
    a.run(alloc, |seqs| Ok(seqs.iter().enumerate().map(|(b, s)| (b, s.kv_len - 1)).collect()))
}

/// Causal prefill (the non-causal form runs on the reference).
fn prefill(p: &ingot_core::PrefillParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let a = Paged {
        op: "batch_prefill_with_paged_kv_cache",
        ins,
        hq: p.num_qo_heads,
        hk: p.num_kv_heads,
        d: p.head_size,
        page_size: p.page_size,
        num_pages: p.num_pages,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        cap: p.logits_soft_cap,
    };
    let qo_indptr = input(a.op, ins, "qo_indptr")?.view::<i32>()?;
    a.run(alloc, |seqs| {
        let kv_lens: Vec<usize> = seqs.iter().map(|s| s.kv_len).collect();
        // Causal: every query sits at a position ≥ 0 (the check refuses qo_len > kv_len).
        Ok(crate::attention::query_rows(p, &qo_indptr, &kv_lens)?.into_iter().map(|(b, pos)| (b, pos as usize)).collect())
    })
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
            let op = op(GatedParams { num_tokens: 2, intermediate_size: 5, dtype: F32 });
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
        let gated = |dtype| GatedParams { num_tokens: 2, intermediate_size: 4, dtype };
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
