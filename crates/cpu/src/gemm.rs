//! `gemm` reference: C[m,n] = op(A)·op(B) (+ bias[n]), f64 accumulation, C rounded
//! once to the input dtype. A is [m,k] or, with `transa`, [k,m]; B is [k,n] or, with
//! `transb`, [n,k] (row-major, like `torch.matmul(A.T if transa else A, ...)`).

use crate::util::{f64_in, float_out, outputs};
use ingot_core::{GemmParams, Result, Tensors};

pub fn gemm(p: &GemmParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "gemm";
    let a = f64_in(OP, inputs, "a")?;
    let b = f64_in(OP, inputs, "b")?;
    let bias = if p.use_bias { Some(f64_in(OP, inputs, "bias")?) } else { None };
    let (m, n, k) = (p.m, p.n, p.k);
    let a_at = |i: usize, l: usize| if p.transa { a[l * m + i] } else { a[i * k + l] };
    let b_at = |l: usize, j: usize| if p.transb { b[j * k + l] } else { b[l * n + j] };
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.as_ref().map_or(0.0, |b| b[j]);
            for l in 0..k {
                acc += a_at(i, l) * b_at(l, j);
            }
            c[i * n + j] = acc;
        }
    }
    Ok(outputs([("c", float_out(p.dtype, &[m, n], &c))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, DType, Op, Tensor};

    fn run(p: GemmParams, a: &[f32], b: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let op = Op::Gemm(p.clone());
        let specs = op.inputs();
        let mut t = Tensors::new();
        t.insert("a".into(), Tensor::from_f32(p.dtype, specs[0].shape.clone(), a));
        t.insert("b".into(), Tensor::from_f32(p.dtype, specs[1].shape.clone(), b));
        if let Some(bias) = bias {
            t.insert("bias".into(), Tensor::from_f32(p.dtype, vec![p.n], bias));
        }
        CpuBackend.run(&op, &t).unwrap()["c"].to_f32().unwrap()
    }

    #[test]
    fn small_product_by_hand() {
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
        let p = GemmParams { m: 2, n: 2, k: 2, transa: false, transb: false, use_bias: false, dtype: DType::F32 };
        assert_eq!(run(p.clone(), &[1., 2., 3., 4.], &[5., 6., 7., 8.], None), vec![19., 22., 43., 50.]);
        // transa: A stored as [k,m] = [1 3; 2 4] is the same A
        let pt = GemmParams { transa: true, ..p.clone() };
        assert_eq!(run(pt, &[1., 3., 2., 4.], &[5., 6., 7., 8.], None), vec![19., 22., 43., 50.]);
        // transb: B stored as [n,k] = [5 7; 6 8]
        let pb = GemmParams { transb: true, use_bias: true, ..p };
        assert_eq!(run(pb, &[1., 2., 3., 4.], &[5., 7., 6., 8.], Some(&[1., -1.])), vec![20., 21., 44., 49.]);
    }

    #[test]
    fn rectangular_shapes() {
        // A [1,3] = [1 2 3], B [3,2] = [[1,0],[0,1],[1,1]] -> [4, 5]
        let p = GemmParams { m: 1, n: 2, k: 3, transa: false, transb: false, use_bias: false, dtype: DType::BF16 };
        assert_eq!(run(p, &[1., 2., 3.], &[1., 0., 0., 1., 1., 1.], None), vec![4., 5.]);
    }
}
