//! Property tests of the CPU reference, one or more per op family, over random shapes
//! and values. (Per-module tests hold the hand-worked values; attention, RoPE, the KV
//! quantization and the GGUF formats have their own properties next to their code.)

use ingot_core::*;
use ingot_cpu::CpuBackend;
use proptest::prelude::*;

fn run(op: Op, inputs: &[(&str, Tensor)]) -> Tensors {
    let t: Tensors = inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    CpuBackend.run(&op, &t).unwrap_or_else(|e| panic!("{e}"))
}

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(DType::F32, shape.to_vec(), v)
}

fn dims() -> impl Strategy<Value = (usize, usize)> {
    (1usize..5, 1usize..70)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn gemm_transposed_storage_is_the_same_product((m, k) in dims(), n in 1usize..20, seed in any::<u64>()) {
        let val = |i: usize, s: u64| (((i as u64).wrapping_mul(2654435761) ^ s) % 17) as f32 - 8.0;
        let a: Vec<f32> = (0..m * k).map(|i| val(i, seed)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i, seed >> 7)).collect();
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let p = GemmParams { m, n, k, transa: false, transb: false, use_bias: false, dtype: DType::F32 };
        let c = run(Op::Gemm(p.clone()), &[("a", f32t(&[m, k], &a)), ("b", f32t(&[k, n], &b))]);
        let pt = GemmParams { transa: true, transb: true, ..p };
        let ct = run(Op::Gemm(pt), &[("a", f32t(&[k, m], &at)), ("b", f32t(&[n, k], &bt))]);
        // Small integers: every product and sum is exact, so the results are identical.
        prop_assert_eq!(&c["c"], &ct["c"]);
    }

    #[test]
    fn rms_norm_ignores_row_scale((t, h) in dims(), scale in 0.01f32..100.0, v in prop::collection::vec(-3.0f32..3.0, 280)) {
        let x: Vec<f32> = (0..t * h).map(|i| v[i % v.len()] + 0.1).collect();
        let xs: Vec<f32> = x.iter().map(|a| a * scale).collect();
        let w: Vec<f32> = (0..h).map(|i| 0.5 + i as f32 / h as f32).collect();
        let p = RmsNormParams { num_tokens: t, hidden_size: h, eps: 0.0, gemma: false, dtype: DType::F32 };
        let y = run(Op::RmsNorm(p.clone()), &[("input", f32t(&[t, h], &x)), ("weight", f32t(&[h], &w))])["output"].to_f64().unwrap();
        let ys = run(Op::RmsNorm(p), &[("input", f32t(&[t, h], &xs)), ("weight", f32t(&[h], &w))])["output"].to_f64().unwrap();
        for (a, b) in y.iter().zip(&ys) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{} vs {}", a, b);
        }
    }

    #[test]
    fn layer_norm_output_has_zero_mean_unit_variance((t, h) in (1usize..4, 2usize..70), v in prop::collection::vec(-5.0f32..5.0, 280)) {
        let x: Vec<f32> = (0..t * h).map(|i| v[i % v.len()] + (i % 3) as f32).collect();
        let p = LayerNormParams { num_tokens: t, hidden_size: h, eps: 0.0, dtype: DType::F32 };
        let ones = vec![1.0; h];
        let zeros = vec![0.0; h];
        let y = run(Op::LayerNorm(p), &[("input", f32t(&[t, h], &x)), ("gamma", f32t(&[h], &ones)), ("beta", f32t(&[h], &zeros))])["output"].to_f64().unwrap();
        for (r, row) in y.chunks(h).enumerate() {
            let xr = &x[r * h..(r + 1) * h];
            if xr.iter().all(|a| *a == xr[0]) { continue; } // zero variance
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / h as f64;
            prop_assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "row {}: mean {} var {}", r, mean, var);
        }
    }

    #[test]
    fn activations_agree_with_their_definitions(v in prop::collection::vec(-20.0f32..20.0, 1..100)) {
        let n = v.len();
        let un = |op: fn(UnaryParams) -> Op| run(op(UnaryParams { num_elements: n, dtype: DType::F32 }), &[("input", f32t(&[n], &v))])["output"].to_f64().unwrap();
        let (silu, sig, relu, gelu, gelu_t) = (un(Op::Silu), un(Op::Sigmoid), un(Op::Relu), un(Op::Gelu), un(Op::GeluTanh));
        for i in 0..n {
            let x = v[i] as f64;
            prop_assert!((silu[i] - x * sig[i]).abs() <= 1e-6 * (1.0 + x.abs()));
            prop_assert!(sig[i] >= 0.0 && sig[i] <= 1.0);
            prop_assert_eq!(relu[i], x.max(0.0));
            // The tanh form approximates erf GELU to about 1e-3.
            prop_assert!((gelu[i] - gelu_t[i]).abs() < 2e-3, "x {} gelu {} tanh {}", x, gelu[i], gelu_t[i]);
        }
        let g = GatedParams { num_tokens: 1, intermediate_size: n, dtype: DType::F32, packed: false };
        let up: Vec<f32> = v.iter().map(|x| 1.0 - x / 40.0).collect();
        let sm = run(Op::SiluAndMul(g), &[("gate", f32t(&[1, n], &v)), ("up", f32t(&[1, n], &up))])["output"].to_f64().unwrap();
        for i in 0..n {
            prop_assert!((sm[i] - silu[i] * up[i] as f64).abs() <= 1e-6 * (1.0 + sm[i].abs()));
        }
    }

    #[test]
    fn cast_is_idempotent_and_widening_is_exact(bits in prop::collection::vec(any::<u32>(), 1..64)) {
        let v: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let n = v.len();
        for to in [DType::F16, DType::BF16] {
            let c = CastParams { num_elements: n, input_dtype: DType::F32, output_dtype: to };
            let once = run(Op::Cast(c), &[("input", f32t(&[n], &v))])["output"].clone();
            let back = CastParams { num_elements: n, input_dtype: to, output_dtype: DType::F32 };
            let wide = run(Op::Cast(back), &[("input", once.clone())])["output"].clone();
            let again = CastParams { num_elements: n, input_dtype: DType::F32, output_dtype: to };
            let twice = run(Op::Cast(again), &[("input", wide.clone())])["output"].clone();
            let (a, b) = (once.to_f32().unwrap(), twice.to_f32().unwrap());
            for i in 0..n {
                prop_assert!(a[i] == b[i] || (a[i].is_nan() && b[i].is_nan()));
                // Narrowing keeps NaN and the sign of infinities.
                prop_assert_eq!(v[i].is_nan(), a[i].is_nan());
            }
            prop_assert_eq!(wide.to_f32().unwrap().iter().filter(|x| !x.is_nan()).count(), a.iter().filter(|x| !x.is_nan()).count());
        }
    }

    #[test]
    fn extract_values_are_sorted_and_at_their_indices((m, nn) in dims(), kf in 0.0f64..1.0, v in prop::collection::vec(-4i32..4, 280)) {
        let x: Vec<f32> = (0..m * nn).map(|i| v[i % v.len()] as f32 * 0.5).collect();
        let k = 1 + ((nn - 1) as f64 * kf) as usize;
        let out = run(Op::ExtractKValues(ExtractKParams { m, n: nn, k, dtype: DType::F32 }), &[("input", f32t(&[m, nn], &x))]);
        let (vals, idx) = (out["values"].to_f32().unwrap(), out["indices"].to_i32().unwrap());
        for r in 0..m {
            for j in 0..k {
                prop_assert_eq!(vals[r * k + j], x[r * nn + idx[r * k + j] as usize]);
                if j > 0 {
                    let (a, b) = (vals[r * k + j - 1], vals[r * k + j]);
                    prop_assert!(a > b || (a == b && idx[r * k + j - 1] < idx[r * k + j]));
                }
            }
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p(v in prop::collection::vec(-6.0f32..6.0, 2..80), top_p in 0.05f64..0.99) {
        let n = v.len();
        let m = run(Op::TopPMask(TopPParams { num_tokens: 1, vocab_size: n, top_p, dtype: DType::F32 }), &[("logits", f32t(&[1, n], &v))])["masked"].to_f32().unwrap();
        let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = v.iter().map(|x| (*x as f64 - mx).exp()).sum();
        let p: Vec<f64> = v.iter().map(|x| (*x as f64 - mx).exp() / z).collect();
        let kept: f64 = (0..n).filter(|&i| m[i].is_finite()).map(|i| p[i]).sum();
        let smallest_kept = (0..n).filter(|&i| m[i].is_finite()).map(|i| p[i]).fold(f64::INFINITY, f64::min);
        prop_assert!(kept >= top_p - 1e-12, "kept {} < {}", kept, top_p);
        prop_assert!(kept - smallest_kept < top_p + 1e-12, "a smaller set already reaches top_p");
        // Every dropped token is no more probable than every kept one.
        let max_dropped = (0..n).filter(|&i| !m[i].is_finite()).map(|i| p[i]).fold(0.0, f64::max);
        prop_assert!(max_dropped <= smallest_kept);
    }

    #[test]
    fn min_p_keeps_exactly_the_tokens_above_threshold(v in prop::collection::vec(-6.0f32..6.0, 1..80), min_p in 0.01f64..1.0) {
        let n = v.len();
        let m = run(Op::MinPMask(MinPParams { num_tokens: 1, vocab_size: n, min_p, dtype: DType::F32 }), &[("logits", f32t(&[1, n], &v))])["masked"].to_f32().unwrap();
        let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        prop_assert!(m.iter().any(|x| *x == mx), "the most probable token is always kept");
        for i in 0..n {
            prop_assert_eq!(m[i].is_finite(), ((v[i] - mx) as f64).exp() >= min_p);
        }
    }

    #[test]
    fn sampling_picks_a_token_with_mass_and_is_monotone_in_u(w in prop::collection::vec(0.0f32..1.0, 1..50), u1 in 0.0f32..1.0, u2 in 0.0f32..1.0) {
        prop_assume!(w.iter().any(|x| *x > 0.0));
        let n = w.len();
        let s = |u: f32| run(Op::SampleFromProbs(SampleParams { num_tokens: 1, vocab_size: n }), &[("probs", f32t(&[1, n], &w)), ("uniform", f32t(&[1], &[u]))])["samples"].to_i32().unwrap()[0];
        let (a, b) = (s(u1.min(u2)), s(u1.max(u2)));
        prop_assert!(w[a as usize] > 0.0 && w[b as usize] > 0.0);
        prop_assert!(a <= b);
    }

    #[test]
    fn embedding_rows_are_table_rows(ids in prop::collection::vec(0i32..50, 1..20)) {
        let (v, h) = (50, 32);
        let table: Vec<f32> = (0..v * h).map(|i| i as f32 * 0.25).collect();
        for dt in [DType::F32, DType::Q8_0] {
            let tt = if dt == DType::F32 { f32t(&[v, h], &table) } else {
                Tensor::from_bytes(dt, vec![v, h], ingot_cpu::quant::quantize_row(dt, &table).unwrap()).unwrap()
            };
            let full = ingot_cpu::quant::dequantize_matrix(&tt, v, h).unwrap();
            let p = EmbeddingParams { num_tokens: ids.len(), hidden_size: h, vocab_size: v, dtype: dt };
            let out = run(Op::EmbeddingLookup(p), &[("table", tt), ("ids", Tensor::from_i32(vec![ids.len()], &ids))])["output"].to_f32().unwrap();
            for (i, &id) in ids.iter().enumerate() {
                prop_assert_eq!(&out[i * h..(i + 1) * h], &full[id as usize * h..(id as usize + 1) * h]);
            }
        }
    }

    #[test]
    fn temperature_scale_then_softmax_is_softmax_with_temperature(v in prop::collection::vec(-10.0f32..10.0, 1..60), t in 0.2f64..3.0) {
        let n = v.len();
        let scaled = run(Op::TemperatureScale(TemperatureParams { num_tokens: 1, vocab_size: n, temperature: t, dtype: DType::F32 }), &[("logits", f32t(&[1, n], &v))])["output"].clone();
        let a = run(Op::Softmax(SoftmaxParams { num_tokens: 1, vocab_size: n, temperature: 1.0, dtype: DType::F32 }), &[("logits", scaled)])["probs"].to_f64().unwrap();
        let b = run(Op::Softmax(SoftmaxParams { num_tokens: 1, vocab_size: n, temperature: t, dtype: DType::F32 }), &[("logits", f32t(&[1, n], &v))])["probs"].to_f64().unwrap();
        for (x, y) in a.iter().zip(&b) {
            prop_assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn quantized_matmul_error_shrinks_with_bits(seed in 0u64..1000) {
        let (n, k) = (4, 256);
        let w: Vec<f32> = (0..n * k).map(|i| (((i as u64 * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 19) as f32 / 9.0) - 1.0).collect();
        let exact: Vec<f64> = (0..n).map(|j| (0..k).map(|l| x[l] as f64 * w[j * k + l] as f64).sum()).collect();
        let err = |dt: DType| {
            let wt = Tensor::from_bytes(dt, vec![n, k], ingot_cpu::quant::quantize_row(dt, &w).unwrap()).unwrap();
            let y = run(Op::QuantizedMatmul(QuantizedMatmulParams { m: 1, n, k, weight_dtype: dt, dtype: DType::F32 }), &[("x", f32t(&[1, k], &x)), ("w", wt)])["y"].to_f64().unwrap();
            y.iter().zip(&exact).map(|(a, b)| (a - b) * (a - b)).sum::<f64>()
        };
        prop_assert!(err(DType::F32) < 1e-8);
        prop_assert!(err(DType::Q8_0) < err(DType::Q4_0) + 1e-12);
        prop_assert!(err(DType::Q6_K) < err(DType::Q2_K) + 1e-12);
    }
}
