//! Time `fast::matmul_xwt` on one thread for one weight format and shape; for kernel
//! work, under `perf stat` (cycles do not depend on other load the way wall time does).
//!
//! `cargo run --release -p ingot-cpu --example matmul_bench -- <dtype> <m> <n> <k> [iters] [portable|avx2|…|best|f32] [threads]`

use ingot_core::DType;
use ingot_cpu::fast::{matmul_xwt_with, WeightView};
use ingot_cpu::quant::quantize_row;
use ingot_cpu::simd::Isa;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: matmul_bench <dtype> <m> <n> <k> [iters] [portable|avx2|…|best|f32] [threads]");
        std::process::exit(2);
    }
    let dtype = DType::WEIGHTS.into_iter().find(|d| d.to_string().eq_ignore_ascii_case(&a[1])).expect("a weight dtype");
    let num = |i: usize| a[i].parse::<usize>().expect("a number");
    let (m, n, k) = (num(2), num(3), num(4));
    let iters = if a.len() > 5 { num(5) } else { 10 };
    // "f32": the path the kernels replaced (decode each weight row to f32, f32 dots), for reference.
    let f32_path = a.get(6).map(String::as_str) == Some("f32");
    let isa = match a.get(6).map(String::as_str).and_then(Isa::parse) {
        Some(i) if !i.available() => {
            eprintln!("matmul_bench: this CPU cannot run the {} path", i.name());
            std::process::exit(2);
        }
        Some(i) => i,
        None => Isa::best(),
    };
    ingot_cpu::set_threads(if a.len() > 7 { num(7) } else { 1 }).unwrap();
    let wv: Vec<f32> = (0..n * k).map(|i| (((i * 7919) % 1013) as f32 / 506.0) - 1.0).collect();
    let x: Vec<f32> = (0..m * k).map(|i| (((i * 104729) % 97) as f32 / 48.0) - 1.0).collect();
    let wq = quantize_row(dtype, &wv).unwrap();
    let w = WeightView::new(dtype, n, k, &wq).unwrap();
    let mut y = vec![0f32; m * n];
    let mut row = vec![0f32; k];
    let mut run = |y: &mut [f32]| {
        if f32_path {
            for j in 0..n {
                w.row(j, &mut row);
                for i in 0..m {
                    y[i * n + j] = ingot_cpu::fast::dot(&x[i * k..(i + 1) * k], &row);
                }
            }
        } else {
            matmul_xwt_with(isa, &x, m, &w, y);
        }
    };
    run(&mut y);
    // The best of 5 batches: the least disturbed by other load on the machine.
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            run(&mut y);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let s = best;
    let macs = (m * n * k * iters) as f64;
    let isa = if f32_path { "f32 (decode + f32 dot)".to_string() } else { format!("{isa:?}") };
    println!("{dtype} {isa} m={m} n={n} k={k}: {:.3} ms/iter, {:.2} GMAC/s (best of 5 batches)", 1e3 * s / iters as f64, macs / s / 1e9);
}
