//! Which kernel runs each op on the [`crate::CpuDevice`]: the fast kernels where the op
//! has one, the reference kernel of this crate otherwise ([`fast_kernel`] lists them; the
//! op-support table is generated from it).

use crate::device::CpuTensor;
use ingot_core::{Backend, DeviceTensors, Error, Op, OpKind, Result, Tensors};

/// Whether the CPU device runs `kind` with a fast kernel (else with the f64 reference).
pub fn fast_kernel(kind: OpKind) -> bool {
    matches!(kind, OpKind::AppendPagedKvCache)
}

fn to_host(inputs: &DeviceTensors<CpuTensor>) -> Result<Tensors> {
    inputs.iter().map(|(k, t)| Ok((k.clone(), t.to_host()?))).collect()
}

fn from_host(out: Tensors) -> Result<DeviceTensors<CpuTensor>> {
    out.into_iter().map(|(k, t)| Ok((k, ingot_core::Device::upload(&crate::CpuDevice, &t)?))).collect()
}

/// Runs `op`, making new output tensors.
pub fn run(op: &Op, inputs: &DeviceTensors<CpuTensor>) -> Result<DeviceTensors<CpuTensor>> {
    op.validate()?;
    check_inputs(op, inputs)?;
    match op {
        // No fast kernel: the reference, on host copies.
        _ => from_host(crate::CpuBackend.run(op, &to_host(inputs)?)?),
    }
}

/// Runs `op` writing the outputs named in `outputs` in place (see `Device::run_into`).
pub fn run_into(op: &Op, inputs: &DeviceTensors<CpuTensor>, outputs: &mut DeviceTensors<CpuTensor>) -> Result<DeviceTensors<CpuTensor>> {
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
            Ok(DeviceTensors::new())
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

/// `append_paged_kv_cache` writing into the caches `k` and `v` (the `k_cache`/`v_cache`
/// inputs are not read: they may be the same tensors).
fn append_in_place(p: &ingot_core::AppendKvParams, inputs: &DeviceTensors<CpuTensor>, k: &CpuTensor, v: &CpuTensor) -> Result<()> {
    let tables: Tensors = ["batch_indices", "positions", "kv_indices", "kv_indptr", "kv_last_page_len"]
        .into_iter()
        .map(|n| Ok((n.to_string(), inputs[n].to_host()?)))
        .collect::<Result<_>>()?;
    let targets = crate::attention::append_targets(p, &tables)?;
    for (cache, rows) in [(k, "append_k"), (v, "append_v")] {
        let src = inputs[rows].bytes()?;
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

/// Dtypes and shapes of `inputs` against the op's specs (values are the kernels' to check).
fn check_inputs(op: &Op, inputs: &DeviceTensors<CpuTensor>) -> Result<()> {
    use ingot_core::DeviceTensor;
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

use ingot_core::DeviceTensor as _;
