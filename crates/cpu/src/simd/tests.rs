//! The kernels against f64 math over `quant::dequantize_row`, on every path this CPU
//! has (the portable one always; AVX2 on x86-64 CPUs with it, which CI's are; AVX-512 on
//! CPUs with AVX-512 F, BW, VL and VNNI, which CI's are not: there these tests say SKIP;
//! NEON on aarch64, which CI runs under qemu).

use super::*;
use crate::quant::{dequantize_row, quantize_row};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The paths to test: every path this CPU can run; the others are skipped, and said so.
fn paths() -> Vec<Isa> {
    let (run, skip): (Vec<Isa>, Vec<Isa>) = Isa::ALL.iter().partition(|i| i.available());
    for i in skip {
        eprintln!("SKIP: this CPU cannot run the {} kernels; they are not tested here", i.name());
    }
    run
}

/// Byte offsets of the f16 scale fields of each block, for random-byte blocks.
fn scale_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

/// `rows` weight rows of `k` values: random bytes with moderate random scales (every bit
/// pattern of the levels, including Q8_0's −128 and Q6_K's scale −128), except for the
/// float formats, which get random values.
fn random_weights(dtype: DType, rows: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    if !DType::QUANTIZED.contains(&dtype) {
        let v: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        return quantize_row(dtype, &v).unwrap();
    }
    let mut b: Vec<u8> = (0..dtype.bytes_for(rows * k).unwrap()).map(|_| rng.gen()).collect();
    for blk in b.chunks_exact_mut(dtype.type_size()) {
        for &o in scale_fields(dtype) {
            let mag = 2f32.powf(rng.gen_range(-9.0..-2.0));
            let v = if rng.gen_bool(0.5) { mag } else { -mag };
            blk[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    b
}

/// Activations: normal-ish values, a few outliers, one all-zero block, one block of
/// tiny values.
fn random_x(rows: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..rows * k)
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            if rng.gen_ratio(1, 64) {
                v * 30.0
            } else {
                v
            }
        })
        .collect();
    x[32..64].fill(0.0);
    x[64..96].iter_mut().for_each(|v| *v *= 1e-38);
    x
}

/// Byte ranges of each block that hold the levels (not the scales).
fn level_bytes(dtype: DType) -> std::ops::Range<usize> {
    match dtype {
        DType::Q4_0 | DType::Q8_0 => 2..dtype.type_size(),
        DType::Q4_1 => 4..20,
        DType::Q5_0 => 2..22,
        DType::Q5_1 => 4..24,
        DType::Q2_K => 16..80,
        DType::Q3_K => 0..96,
        DType::Q4_K | DType::Q5_K => 16..dtype.type_size(),
        DType::Q6_K => 0..192,
        _ => 0..0,
    }
}

/// The value each weight would have at level 0 (its block's min or offset), from the
/// blocks with their level bits cleared: the f32 terms a kernel may add and subtract
/// are bounded by Σ (|w| + |offset|)·|x|.
fn offsets(dtype: DType, w: &[u8], k: usize) -> Vec<f32> {
    let mut z = w.to_vec();
    for b in z.chunks_exact_mut(dtype.type_size()) {
        b[level_bytes(dtype)].fill(0);
    }
    dequant(dtype, &z, k)
}

fn dequant(dtype: DType, w: &[u8], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len() / dtype.bytes_for(k).unwrap() * k];
    dequantize_row(dtype, w, &mut out).unwrap();
    out
}

#[test]
fn quantize_paths_agree_bit_for_bit_and_follow_the_scheme() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let k = 1024;
    let mut x = random_x(3, k, &mut rng);
    x[200] = f32::NAN;
    x[300] = f32::INFINITY;
    x[420] = -0.0;
    let mut first: Option<Q8Rows> = None;
    for isa in paths() {
        let mut q = Q8Rows::default();
        q.quantize(isa, &x, k);
        for (b, xb) in x.chunks_exact(QB).enumerate() {
            let (i, bb) = (b / (k / QB), b % (k / QB));
            let r = q.row(i);
            let (d, s, qs) = (r.d[bb], r.s[bb], &r.qs[bb * QB..(bb + 1) * QB]);
            if xb.iter().any(|v| !v.is_finite()) {
                assert!(d.is_nan() && s.is_nan() && qs.iter().all(|&v| v == 0), "{isa:?} block {b}: a non-finite block gives NaN scales");
                continue;
            }
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let want_d = if amax / 127.0 == 0.0 || !(1.0 / (amax / 127.0)).is_finite() { 0.0 } else { amax / 127.0 };
            assert_eq!(d, want_d, "{isa:?} block {b}: scale");
            let mut sum = 0i32;
            for (&v, &l) in xb.iter().zip(qs) {
                assert!((-127..=127).contains(&l));
                if d > 0.0 {
                    // Round to nearest: within half a step (plus the rounding of x/d).
                    assert!(((v as f64) - (d as f64) * l as f64).abs() <= 0.5001 * d as f64, "{isa:?} block {b}: {v} -> {l} × {d}");
                } else {
                    assert_eq!(l, 0);
                }
                sum += i32::from(l);
            }
            assert_eq!(s, d * sum as f32, "{isa:?} block {b}: sum");
        }
        match &first {
            None => first = Some(q),
            Some(p) => {
                for i in 0..3 {
                    let (a, b) = (p.row(i), q.row(i));
                    assert_eq!(a.qs, b.qs, "paths quantize row {i} differently");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(a.d), bits(b.d));
                    assert_eq!(bits(a.s), bits(b.s));
                }
            }
        }
    }
}

/// Runs a row kernel on one weight row and 1..=4 or 8 activation rows.
fn run_kernel(isa: Isa, dtype: DType, w: &[u8], q8: &[Q8Ref], f: &[&[f32]]) -> Vec<f32> {
    let mut out = vec![0f32; q8.len().max(f.len())];
    match kernels(isa, dtype).unwrap() {
        RowKernel::Q8(dot) => unsafe { dot(w, q8, &mut out) },
        RowKernel::F32(dot) => unsafe { dot(w, f, &mut out) },
    }
    out
}

#[test]
fn kernels_match_f64_math_within_the_activation_rounding() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let nrow = 8;
    for dtype in DType::WEIGHTS {
        let quantized = DType::QUANTIZED.contains(&dtype);
        // K-quants: three super-blocks. Others: 45 blocks of 32, more than a chunk of the
        // AVX2 kernels (32 blocks) and not a multiple of 8 (their scalar tail).
        let k = if dtype.block_size() == 256 { 768 } else { 1440 };
        for trial in 0..6 {
            // Random-byte blocks, and (odd trials) blocks quantized from values.
            let w = if trial % 2 == 0 {
                random_weights(dtype, 1, k, &mut rng)
            } else {
                let v: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                quantize_row(dtype, &v).unwrap()
            };
            let wf = dequant(dtype, &w, k);
            let x = random_x(nrow, k, &mut rng);
            let mut outs: Vec<(Isa, Vec<f32>)> = Vec::new();
            for isa in paths() {
                let mut q = Q8Rows::default();
                q.quantize(isa, &x, k);
                let q8: Vec<Q8Ref> = (0..nrow).map(|i| q.row(i)).collect();
                let f: Vec<&[f32]> = x.chunks_exact(k).collect();
                let (q8, f) = if quantized { (q8, vec![]) } else { (vec![], f) };
                let all = run_kernel(isa, dtype, &w, &q8, &f);
                let four = run_kernel(isa, dtype, &w, &q8[..q8.len().min(4)], &f[..f.len().min(4)]);
                for i in 0..nrow {
                    if i < 4 {
                        assert_eq!(four[i].to_bits(), all[i].to_bits(), "{dtype} {isa:?}: row {i} of four differs from eight at once");
                    }
                    // One row at a time gives the same bits as four at once.
                    let one = if quantized {
                        run_kernel(isa, dtype, &w, &q8[i..i + 1], &[])
                    } else {
                        run_kernel(isa, dtype, &w, &[], &f[i..i + 1])
                    };
                    assert_eq!(one[0].to_bits(), all[i].to_bits(), "{dtype} {isa:?}: row {i} alone differs from eight rows at once");
                    let xr = &x[i * k..(i + 1) * k];
                    let exact: f64 = wf.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = wf.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let got = all[i] as f64;
                    if quantized {
                        let r = q.row(i);
                        // x as the kernels see it: d·q per block.
                        let xh: Vec<f64> = (0..k).map(|e| r.d[e / QB] as f64 * r.qs[e] as f64).collect();
                        let on_grid: f64 = wf.iter().zip(&xh).map(|(&a, &b)| a as f64 * b).sum();
                        let off = offsets(dtype, &w, k);
                        let mag_h: f64 =
                            wf.iter().zip(&off).zip(&xh).map(|((&a, &o), &b)| (a.abs() as f64 + o.abs() as f64) * b.abs()).sum();
                        // f32 rounding only: a few ulps of each term, summed over up to 45 blocks.
                        let tol = 4e-6 * mag_h + 1e-30;
                        assert!(
                            (got - on_grid).abs() <= tol,
                            "{dtype} {isa:?} trial {trial} row {i}: {got} vs {on_grid} on the 8-bit grid (tol {tol:e})"
                        );
                        // Against exact math: each x moved by at most half its block's step.
                        let bound: f64 = (0..k).map(|e| 0.5 * r.d[e / QB] as f64 * (wf[e] as f64).abs()).sum();
                        let tol = bound + 4e-6 * mag_h;
                        assert!((got - exact).abs() <= tol, "{dtype} {isa:?} trial {trial} row {i}: {got} vs exact {exact} (tol {tol:e})");
                    } else {
                        let tol = 2e-6 * mag;
                        assert!((got - exact).abs() <= tol, "{dtype} {isa:?} trial {trial} row {i}: {got} vs exact {exact} (tol {tol:e})");
                    }
                    if let Some((_, p)) = outs.first() {
                        let off = offsets(dtype, &w, k);
                        let mag: f64 =
                            wf.iter().zip(&off).zip(xr).map(|((&a, &o), &b)| (a.abs() as f64 + o.abs() as f64) * (b as f64).abs()).sum();
                        let tol = 8e-6 * mag + 1e-30;
                        assert!((p[i] as f64 - got).abs() <= tol, "{dtype} {isa:?} trial {trial} row {i}: {got} vs portable {}", p[i]);
                    }
                }
                outs.push((isa, all));
            }
        }
    }
}

#[test]
fn float_kernels_handle_rows_not_a_multiple_of_eight() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for k in [1, 7, 8, 9, 15, 16, 17, 31, 45] {
            let w = random_weights(dtype, 1, k, &mut rng);
            let wf = dequant(dtype, &w, k);
            let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mag: f64 = wf.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            for isa in paths() {
                let got = run_kernel(isa, dtype, &w, &[], &[&x])[0] as f64;
                assert!((got - exact).abs() <= 1e-6 * mag, "{dtype} {isa:?} k={k}: {got} vs {exact}");
            }
        }
    }
}

#[test]
fn non_finite_activations_give_nan() {
    let k = 256;
    let mut x = vec![0.5f32; k];
    x[7] = f32::INFINITY;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in DType::QUANTIZED {
        let w = random_weights(dtype, 1, k, &mut rng);
        for isa in paths() {
            let mut q = Q8Rows::default();
            q.quantize(isa, &x, k);
            assert!(run_kernel(isa, dtype, &w, &[q.row(0)], &[])[0].is_nan(), "{dtype} {isa:?}");
        }
    }
}

#[test]
fn several_weight_rows_per_call_give_the_same_bits() {
    // 4 × 1 and 2 × 1 calls (one activation row, the matmul's m = 1 path) against 1 × 1.
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for dtype in DType::WEIGHTS {
        let k = if dtype.block_size() == 256 { 512 } else { 1440 };
        let w = random_weights(dtype, 4, k, &mut rng);
        let rb = w.len() / 4;
        let x = random_x(1, k, &mut rng);
        for isa in paths() {
            let mut q = Q8Rows::default();
            q.quantize(isa, &x, k);
            let call = |w: &[u8], c: usize| {
                let mut out = vec![0f32; c];
                match kernels(isa, dtype).unwrap() {
                    RowKernel::Q8(dot) => unsafe { dot(w, &[q.row(0)], &mut out) },
                    RowKernel::F32(dot) => unsafe { dot(w, &[&x[..]], &mut out) },
                }
                out
            };
            let one: Vec<f32> = (0..4).map(|j| call(&w[j * rb..(j + 1) * rb], 1)[0]).collect();
            let four = call(&w, 4);
            let two: Vec<f32> = [call(&w[..2 * rb], 2), call(&w[2 * rb..], 2)].concat();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&four), "{dtype} {isa:?}: 4 rows per call");
            assert_eq!(bits(&one), bits(&two), "{dtype} {isa:?}: 2 rows per call");
        }
    }
}

#[test]
fn isa_names_parse_back_and_unknown_names_do_not() {
    for &isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
    for bad in ["", "AVX2", "avx", "avx-512", "sse4", " portable"] {
        assert_eq!(Isa::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn ingot_cpu_isa_picks_a_runnable_path_or_warns() {
    let fastest = Isa::fastest();
    assert!(fastest.available());
    assert_eq!(Isa::choose(None), (fastest, None));
    assert_eq!(Isa::choose(Some("")), (fastest, None));
    assert_eq!(Isa::choose(Some("portable")), (Isa::Portable, None));
    // Case and surrounding spaces are forgiven in the variable.
    assert_eq!(Isa::choose(Some(" Portable ")), (Isa::Portable, None));
    for &isa in Isa::ALL {
        let (got, warning) = Isa::choose(Some(isa.name()));
        if isa.available() {
            assert_eq!((got, warning), (isa, None));
        } else {
            assert_eq!(got, fastest);
            let w = warning.expect("a path this CPU cannot run is not silently ignored");
            assert!(w.contains("cannot run") && w.contains(isa.name()), "{w}");
        }
    }
    let (got, warning) = Isa::choose(Some("sse9"));
    assert_eq!(got, fastest);
    let w = warning.expect("an unknown name is not silently ignored");
    assert!(w.contains("INGOT_CPU_ISA=sse9") && w.contains("not a known path") && w.contains("avx512"), "{w}");
}
