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
    run_with(op, inputs, Alloc::Plain)
}

/// Runs `op` with every output in a [`CpuTensor::guarded`] buffer, and checks the guards:
/// [`Error::OutOfBounds`] when the op wrote outside an output.
pub fn run_guarded(op: &Op, inputs: &Tens) -> Result<Tens> {
    let out = run_with(op, inputs, Alloc::Guarded)?;
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

fn run_with(op: &Op, inputs: &Tens, alloc: Alloc) -> Result<Tens> {
    op.validate()?;
    check_inputs(op, inputs)?;
    match fast_path(op) {
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
    let specs = op.outputs();
    for (name, t) in outputs.iter() {
        let s = specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::invalid(op.name(), format!("run_into: the op has no output '{name}'")))?;
        ingot_core::ensure!(
            t.dtype() == s.dtype && t.shape() == s.shape.as_slice(),
            op.name(),
            "run_into: output '{name}' is {} {:?}, the op writes {} {:?}",
            t.dtype(),
            t.shape(),
            s.dtype,
            s.shape
        );
    }
    match op {
        Op::AppendPagedKvCache(p) if outputs.contains_key("k_cache_out") && outputs.contains_key("v_cache_out") => {
            append_in_place(p, inputs, &outputs["k_cache_out"], &outputs["v_cache_out"])?;
            Ok(Tens::new())
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
