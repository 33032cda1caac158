//! Copy references: `copy_pages` (whole pages of a paged cache onto other pages, the
//! copy-on-write of a shared prefix page) and `write_columns` (a block of columns of a
//! wider matrix). They move bits, never values: NaN payloads and −0 survive, and every
//! dtype of [`ingot_core::COPY_DTYPES`] is the same byte copy.
//!
//! The byte-level forms ([`copy_pages_in_place`], [`write_columns_in_place`]) are what the
//! CPU device runs for the in-place `Device::run_into` calls.

use crate::device_ops::Tens;
use crate::util::{get, i32_in, outputs};
use ingot_core::{ensure, CopyPagesParams, Op, Result, Tensor, Tensors, WriteColumnsParams};

/// `copy_pages`: `cache_out` = `cache` with page dst_pages[i] replaced by page
/// src_pages[i]. Ids outside 0..num_pages, a page written twice and a page both read and
/// written are errors ([`CopyPagesParams::check_pages`]).
pub fn copy_pages(p: &CopyPagesParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "copy_pages";
    Op::CopyPages(p.clone()).check_inputs(inputs)?;
    let src = i32_in(OP, inputs, "src_pages")?;
    let dst = i32_in(OP, inputs, "dst_pages")?;
    p.check_pages(OP, &src, &dst)?;
    let cache = get(OP, inputs, "cache")?;
    let mut bytes = cache.data.clone();
    copy_pages_in_place(p, &src, &dst, &mut bytes)?;
    Ok(outputs([("cache_out", Tensor::from_bytes(p.dtype, cache.shape.clone(), bytes)?)]))
}

/// Apply the page copies to the bytes of a cache of `p`'s shape, in place. The page lists
/// must have passed [`CopyPagesParams::check_pages`] (ids are checked again here, so no
/// list makes this index out of bounds).
pub fn copy_pages_in_place(p: &CopyPagesParams, src: &[i32], dst: &[i32], cache: &mut [u8]) -> Result<()> {
    const OP: &str = "copy_pages";
    let page = p.page_size * p.num_kv_heads * p.head_size * p.dtype.type_size();
    ensure!(
        cache.len() == p.num_pages * page,
        OP,
        "the cache holds {} bytes, {} pages need {}",
        cache.len(),
        p.num_pages,
        p.num_pages * page
    );
    for (&s, &d) in src.iter().zip(dst) {
        let ok = |id: i32| id >= 0 && (id as usize) < p.num_pages;
        ensure!(ok(s) && ok(d), OP, "page copy {s} -> {d} is outside 0..{} pages", p.num_pages);
        let (s, d) = (s as usize, d as usize);
        cache.copy_within(s * page..(s + 1) * page, d * page);
    }
    Ok(())
}

/// `write_columns`: `output` = `dst` with columns offset..offset+src_width of every row
/// replaced by that row of `src`.
pub fn write_columns(p: &WriteColumnsParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "write_columns";
    Op::WriteColumns(p.clone()).check_inputs(inputs)?;
    let dst = get(OP, inputs, "dst")?;
    let mut bytes = dst.data.clone();
    write_columns_in_place(p, &get(OP, inputs, "src")?.data, &mut bytes)?;
    Ok(outputs([("output", Tensor::from_bytes(p.dtype, dst.shape.clone(), bytes)?)]))
}

/// Write the bytes of `src` [num_rows, src_width] into the columns of `out` [num_rows,
/// dst_width], in place.
pub fn write_columns_in_place(p: &WriteColumnsParams, src: &[u8], out: &mut [u8]) -> Result<()> {
    const OP: &str = "write_columns";
    let es = p.dtype.type_size();
    let (sw, dw, at) = (p.src_width * es, p.dst_width * es, p.offset * es);
    ensure!(src.len() == p.num_rows * sw, OP, "src holds {} bytes, expected {}", src.len(), p.num_rows * sw);
    ensure!(out.len() == p.num_rows * dw, OP, "the output holds {} bytes, expected {}", out.len(), p.num_rows * dw);
    ensure!(at + sw <= dw, OP, "columns {}..{} are outside dst_width {}", p.offset, p.offset + p.src_width, p.dst_width);
    for (row, s) in out.chunks_exact_mut(dw).zip(src.chunks_exact(sw)) {
        row[at..at + sw].copy_from_slice(s);
    }
    Ok(())
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The in-place forms of this family's ops for [`crate::device_ops::run_into`].
pub(crate) fn run_into(op: &Op, inputs: &Tens, outputs: &Tens) -> Option<Result<Tens>> {
    let done = |r: Result<()>| Some(r.map(|()| Tens::new()));
    match op {
        // The page copies inside `cache_out` (the `cache` input is not read: it may be the
        // same tensor). Index lists are read before the write lock is taken.
        Op::CopyPages(p) if outputs.contains_key("cache_out") => done((|| {
            let src = inputs["src_pages"].with_i32(<[i32]>::to_vec)?;
            let dst = inputs["dst_pages"].with_i32(<[i32]>::to_vec)?;
            p.check_pages(op.name(), &src, &dst)?;
            copy_pages_in_place(p, &src, &dst, outputs["cache_out"].write()?.bytes())
        })()),
        // `src` written into the columns of `output` (the `dst` input is not read: it may be
        // the same tensor); src is copied out first, in case it shares storage too.
        Op::WriteColumns(p) if outputs.contains_key("output") => done((|| {
            let src = inputs["src"].bytes()?.to_vec();
            write_columns_in_place(p, &src, outputs["output"].write()?.bytes())
        })()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, DType};

    fn pages_case(dtype: DType, src: &[i32], dst: &[i32]) -> (CopyPagesParams, Tensors) {
        let p = CopyPagesParams { num_pages: 4, page_size: 1, num_kv_heads: 1, head_size: 3, num_copies: src.len(), dtype };
        let mut m = Tensors::new();
        let n = 12;
        let cache = match dtype {
            DType::U32 => Tensor::from_u32(vec![4, 1, 1, 3], &(0..n as u32).map(|v| v * 0x0101_0101).collect::<Vec<_>>()),
            _ => Tensor::from_f32(dtype, vec![4, 1, 1, 3], &(0..n).map(|v| v as f32).collect::<Vec<_>>()),
        };
        m.insert("cache".into(), cache);
        m.insert("src_pages".into(), Tensor::from_i32(vec![src.len()], src));
        m.insert("dst_pages".into(), Tensor::from_i32(vec![dst.len()], dst));
        (p, m)
    }

    #[test]
    fn copy_pages_by_hand() {
        // Page 0 -> 2 and page 3 -> 1; pages 0 and 3 keep their values.
        let (p, m) = pages_case(DType::F16, &[0, 3], &[2, 1]);
        let out = CpuBackend.run(&Op::CopyPages(p), &m).unwrap()["cache_out"].to_f32().unwrap();
        assert_eq!(out, vec![0., 1., 2., 9., 10., 11., 0., 1., 2., 9., 10., 11.]);
        // One source to two targets, u32 words moved as they are.
        let (p, m) = pages_case(DType::U32, &[1, 1], &[0, 3]);
        let out = CpuBackend.run(&Op::CopyPages(p), &m).unwrap()["cache_out"].to_u32().unwrap();
        let w = |v: u32| v * 0x0101_0101;
        assert_eq!(out, vec![w(3), w(4), w(5), w(3), w(4), w(5), w(6), w(7), w(8), w(3), w(4), w(5)]);
    }

    #[test]
    fn copy_pages_rejects_bad_lists() {
        for (src, dst, msg) in [
            (&[0, 4][..], &[1, 2][..], "[copy_pages] src_pages[1] = 4 is outside 0..4 pages"),
            (&[0, 0], &[2, 2], "[copy_pages] dst_pages[0] and dst_pages[1] are both page 2"),
            (&[0, 2], &[2, 3], "[copy_pages] page 2 is both a source (src_pages[1]) and a target (dst_pages[0])"),
        ] {
            let (p, m) = pages_case(DType::F32, src, dst);
            assert_eq!(CpuBackend.run(&Op::CopyPages(p), &m).unwrap_err().to_string(), msg);
        }
        // The byte form checks ids itself.
        let (p, _) = pages_case(DType::F32, &[0], &[1]);
        let mut bytes = vec![0u8; 48];
        assert!(copy_pages_in_place(&p, &[0], &[7], &mut bytes).is_err());
        assert!(copy_pages_in_place(&p, &[0], &[1], &mut bytes[..44]).is_err());
    }

    #[test]
    fn write_columns_by_hand() {
        // bf16, odd widths and offset: rows of 5, columns 1..4 from src.
        let p = WriteColumnsParams { num_rows: 2, src_width: 3, dst_width: 5, offset: 1, dtype: DType::BF16 };
        let mut m = Tensors::new();
        m.insert("src".into(), Tensor::from_f32(DType::BF16, vec![2, 3], &[1., 2., 3., 4., 5., 6.]));
        m.insert("dst".into(), Tensor::from_f32(DType::BF16, vec![2, 5], &[-1., -2., -3., -4., -5., -6., -7., -8., -9., -0.]));
        let out = CpuBackend.run(&Op::WriteColumns(p.clone()), &m).unwrap()["output"].to_f32().unwrap();
        assert_eq!(out, vec![-1., 1., 2., 3., -5., -6., 4., 5., 6., -0.]);
        assert!(out[9].is_sign_negative());
        assert!(write_columns_in_place(&p, &[0u8; 12], &mut [0u8; 18]).is_err());
    }

    /// The in-place forms on the CPU device, with the output the same tensor as the input
    /// it replaces, give the reference's result, and leave the index tensors alone.
    #[test]
    fn in_place_on_the_device_equals_the_reference() {
        use crate::CpuDevice;
        use ingot_core::{Device, DeviceTensors};
        let dev = CpuDevice;
        let (p, m) = pages_case(DType::F16, &[0, 3], &[2, 1]);
        let op = Op::CopyPages(p);
        let want = CpuBackend.run(&op, &m).unwrap();
        let on: DeviceTensors<_> = m.iter().map(|(k, t)| (k.clone(), dev.upload(t).unwrap())).collect();
        let mut outs = DeviceTensors::from([("cache_out".to_string(), on["cache"].clone())]);
        assert!(dev.run_into(&op, &on, &mut outs).unwrap().is_empty());
        assert_eq!(dev.download(&on["cache"]).unwrap(), want["cache_out"]);
        assert_eq!(dev.download(&on["src_pages"]).unwrap(), m["src_pages"]);
        // Bad lists are rejected before anything is written.
        let (p, m) = pages_case(DType::F32, &[0, 2], &[2, 3]);
        let on: DeviceTensors<_> = m.iter().map(|(k, t)| (k.clone(), dev.upload(t).unwrap())).collect();
        let mut outs = DeviceTensors::from([("cache_out".to_string(), on["cache"].clone())]);
        assert!(dev.run_into(&Op::CopyPages(p), &on, &mut outs).unwrap_err().to_string().starts_with("[copy_pages] page 2"));
        assert_eq!(dev.download(&on["cache"]).unwrap(), m["cache"]);

        let p = WriteColumnsParams { num_rows: 3, src_width: 3, dst_width: 7, offset: 4, dtype: DType::F16 };
        let mut m = Tensors::new();
        m.insert("src".into(), Tensor::from_f32(DType::F16, vec![3, 3], &(0..9).map(|v| v as f32).collect::<Vec<_>>()));
        m.insert("dst".into(), Tensor::from_f32(DType::F16, vec![3, 7], &(0..21).map(|v| -(v as f32)).collect::<Vec<_>>()));
        let op = Op::WriteColumns(p);
        let want = CpuBackend.run(&op, &m).unwrap();
        let on: DeviceTensors<_> = m.iter().map(|(k, t)| (k.clone(), dev.upload(t).unwrap())).collect();
        let mut outs = DeviceTensors::from([("output".to_string(), on["dst"].clone())]);
        dev.run_into(&op, &on, &mut outs).unwrap();
        assert_eq!(dev.download(&on["dst"]).unwrap(), want["output"]);
    }
}
