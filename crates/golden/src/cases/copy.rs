//! Golden cases of `copy_pages` and `write_columns`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `copy_pages`: parameters from the flags, inputs from the seed.
pub(crate) fn copy_pages(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = CopyPagesParams {
            num_pages: f.usize(&["num_pages"], 8)?,
            page_size: f.usize(&["page_size"], 16)?,
            num_kv_heads: f.usize(&["num_kv_heads"], 2)?,
            head_size: f.usize(&["head_size", "head_dim"], 64)?,
            num_copies: f.usize(&["num_copies"], 2)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::CopyPages(p.clone());
        op.validate()?;
        limit(&op)?;
        // Distinct targets, sources drawn from the other pages (one source may feed two
        // targets, as a shared prefix page copied for two sequences).
        let mut perm: Vec<usize> = (0..p.num_pages).collect();
        for i in (1..perm.len()).rev() {
            let j = g.below(i + 1);
            perm.swap(i, j);
        }
        let (dst, rest) = perm.split_at(p.num_copies);
        let src: Vec<i32> = (0..p.num_copies).map(|i| rest[if i < 2 { 0 } else { g.below(rest.len()) }] as i32).collect();
        let dst: Vec<i32> = dst.iter().map(|&d| d as i32).collect();
        let shape = [p.num_pages, p.page_size, p.num_kv_heads, p.head_size];
        let n: usize = shape.iter().product();
        let m = ins([
            ("cache", copy_tensor(g, p.dtype, &shape, n)),
            ("src_pages", Tensor::from_i32(vec![p.num_copies], &src)),
            ("dst_pages", Tensor::from_i32(vec![p.num_copies], &dst)),
        ]);
        (op, m)
    };
    Ok((op, inputs))
}

/// `write_columns`: parameters from the flags, inputs from the seed.
pub(crate) fn write_columns(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let src_width = f.usize(&["src_width"], 32)?;
        let dst_width = f.usize(&["dst_width"], 96)?;
        let p = WriteColumnsParams {
            num_rows: f.usize(&["num_rows"], 4)?,
            src_width,
            dst_width,
            offset: f.usize(&["offset"], dst_width.saturating_sub(src_width))?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::WriteColumns(p.clone());
        op.validate()?;
        limit(&op)?;
        let (r, d) = (p.num_rows, p.dtype);
        let m = ins([
            ("src", copy_tensor(g, d, &[r, p.src_width], r * p.src_width)),
            ("dst", copy_tensor(g, d, &[r, p.dst_width], r * p.dst_width)),
        ]);
        (op, m)
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(
            v,
            format!("awk_{n}"),
            CopyPages,
            &[("num_pages", "7"), ("page_size", "3"), ("num_kv_heads", "1"), ("head_size", "33"), ("num_copies", "3")],
            &[dt()],
        );
        e(
            v,
            format!("one_{n}"),
            CopyPages,
            &[("num_pages", "2"), ("page_size", "1"), ("num_kv_heads", "3"), ("head_size", "31"), ("num_copies", "1")],
            &[dt()],
        );
        e(
            v,
            format!("llm_{n}"),
            CopyPages,
            &[("num_pages", "12"), ("page_size", "16"), ("num_kv_heads", "2"), ("head_size", "64"), ("num_copies", "4")],
            &[dt()],
        );
        e(v, format!("awk_{n}"), WriteColumns, &[("num_rows", "3"), ("src_width", "31"), ("dst_width", "97"), ("offset", "33")], &[dt()]);
        e(v, format!("even_{n}"), WriteColumns, &[("num_rows", "4"), ("src_width", "32"), ("dst_width", "96"), ("offset", "32")], &[dt()]);
        e(v, format!("last_part_{n}"), WriteColumns, &[("num_rows", "5"), ("src_width", "33"), ("dst_width", "100")], &[dt()]);
        e(
            v,
            format!("one_row_whole_{n}"),
            WriteColumns,
            &[("num_rows", "1"), ("src_width", "31"), ("dst_width", "31"), ("offset", "0")],
            &[dt()],
        );
    }

    for d in [DType::I32, DType::U32] {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(
            v,
            format!("awk_{n}"),
            CopyPages,
            &[("num_pages", "5"), ("page_size", "3"), ("num_kv_heads", "1"), ("head_size", "5"), ("num_copies", "2")],
            &[dt()],
        );
        e(v, format!("awk_{n}"), WriteColumns, &[("num_rows", "3"), ("src_width", "5"), ("dst_width", "17"), ("offset", "7")], &[dt()]);
    }
}
