//! Dense `gemm`: c = A·B (+ bias), A = aᵀ when `transa`, B = bᵀ when `transb`, with
//! f32/f16/bf16 inputs, f32 accumulation and one rounding of c to the dtype.
//!
//! Three CubeCL kernels, chosen at launch ([`gemm_kernel_name`]); transpositions and bias
//! are run-time flags, so each is compiled once per dtype:
//! - m ≤ 8 (decode): a skinny kernel, 8 output columns per cube, 32 units splitting k for
//!   each column (x·Wᵀ reads each weight row contiguously);
//! - otherwise one 64×64 output tile per cube, folded onto the grid as the row kernels
//!   are: a shared-memory tiled kernel that runs on every device (lavapipe included):
//!   256 threads, 16-deep k slices of A and B staged in shared memory as f32, each thread
//!   accumulating a 4×4 block (rows ty + 16·i, columns tx + 16·j, so neighbouring threads
//!   touch neighbouring shared words and output elements);
//! - or, for f16/bf16 where the device reports 16×16×16 cmma with f32 accumulation for
//!   the dtype and 32-wide planes (CUDA; lavapipe has none), a tensor-core kernel through
//!   `cubecl::cmma`: four planes, each owning a 32×32 quarter of the tile as 2×2
//!   accumulator fragments, A and B staged in shared memory in the dtype, the
//!   accumulators stored through shared memory for the bounds-checked, bias-adding,
//!   rounding write.
//!
//! Out-of-range rows, columns and k are staged as zeros, so any m, n, k works. No
//! kernel is tuned the way cuBLAS is (no multi-stage pipeline, no vector loads); on CUDA
//! the dense f16/bf16 GEMM is meant for cuBLASLt where it is loaded.

use crate::device::{cube_index, grid_cubes, input, with_float, Device, GpuTensor, GpuTensors};
use cubecl::ir::features::MmaConfig;
use cubecl::prelude::*;
use ingot_core::{DType, GemmParams, Result};

/// Output tile edge of both kernels.
const TILE: usize = 64;
/// Depth of the k slices the tiled kernel stages in shared memory.
const TK: usize = 16;
/// Threads of the tiled kernel (a 16 × 16 grid, 4 × 4 outputs each).
const TILED_THREADS: u32 = 256;
/// cmma fragment edge (m = n = k = 16).
const FRAG: usize = 16;
/// Threads of the cmma kernel: four planes of 32.
const CMMA_THREADS: u32 = 128;

/// A[i, l] of the op: a[i, l], or a[l, i] with `ta` (a stored [k, m]).
#[cube]
fn a_at<F: Float>(a: &Array<F>, i: usize, l: usize, m: usize, k: usize, ta: bool) -> F {
    a[select(ta, l * m + i, i * k + l)]
}

/// B[l, j] of the op: b[l, j], or b[j, l] with `tb` (b stored [n, k]).
#[cube]
fn b_at<F: Float>(b: &Array<F>, l: usize, j: usize, n: usize, k: usize, tb: bool) -> F {
    b[select(tb, j * k + l, l * n + j)]
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_tiled_kernel<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    bias: &Array<F>,
    c: &mut Array<F>,
    m: usize,
    n: usize,
    k: usize,
    tiles_n: usize,
    tiles: usize,
    flags: u32,
) {
    // Bit 0: transa, bit 1: transb, bit 2: bias (runtime flags: one compiled kernel per
    // dtype serves every layout).
    let ta = (flags & 1u32) != 0;
    let tb = (flags & 2u32) != 0;
    let has_bias = (flags & 4u32) != 0;
    let tile = cube_index();
    if tile < tiles {
        let row0 = (tile / tiles_n) * TILE;
        let col0 = (tile % tiles_n) * TILE;
        let t = UNIT_POS_X as usize;
        let tx = t % 16;
        let ty = t / 16;
        // Staged slices: sa[l][i] (TK × TILE), sb[l][j] (TK × TILE), f32.
        let mut sa = SharedMemory::<f32>::new(TK * TILE);
        let mut sb = SharedMemory::<f32>::new(TK * TILE);
        let mut acc = Array::<f32>::new(16usize);
        #[unroll]
        for r in 0..16usize {
            acc[r] = 0.0;
        }
        let mut a_reg = Array::<f32>::new(4usize);
        let mut b_reg = Array::<f32>::new(4usize);
        let mut k0 = 0usize;
        while k0 < k {
            // 1024 elements of each slice, 4 per thread; consecutive threads take
            // consecutive addresses of the stored matrix.
            #[unroll]
            for r in 0..4usize {
                let e = t + r * TILED_THREADS as usize;
                let i = select(ta, e % TILE, e / TK);
                let l = select(ta, e / TILE, e % TK);
                let (gi, gl) = (row0 + i, k0 + l);
                let mut va = 0.0f32;
                if gi < m && gl < k {
                    va = f32::cast_from(a_at(a, gi, gl, m, k, ta));
                }
                sa[l * TILE + i] = va;
                let l2 = select(tb, e % TK, e / TILE);
                let j = select(tb, e / TK, e % TILE);
                let (gl2, gj) = (k0 + l2, col0 + j);
                let mut vb = 0.0f32;
                if gl2 < k && gj < n {
                    vb = f32::cast_from(b_at(b, gl2, gj, n, k, tb));
                }
                sb[l2 * TILE + j] = vb;
            }
            sync_cube();
            for l in 0..TK {
                #[unroll]
                for i in 0..4usize {
                    a_reg[i] = sa[l * TILE + ty + 16 * i];
                    b_reg[i] = sb[l * TILE + tx + 16 * i];
                }
                #[unroll]
                for i in 0..4usize {
                    #[unroll]
                    for j in 0..4usize {
                        acc[i * 4 + j] += a_reg[i] * b_reg[j];
                    }
                }
            }
            sync_cube();
            k0 += TK;
        }
        #[unroll]
        for i in 0..4usize {
            #[unroll]
            for j in 0..4usize {
                let (gi, gj) = (row0 + ty + 16 * i, col0 + tx + 16 * j);
                if gi < m && gj < n {
                    let mut v = acc[i * 4 + j];
                    if has_bias {
                        v += f32::cast_from(bias[gj]);
                    }
                    c[gi * n + gj] = F::cast_from(v);
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_cmma_kernel<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    bias: &Array<F>,
    c: &mut Array<F>,
    m: usize,
    n: usize,
    k: usize,
    tiles_n: usize,
    tiles: usize,
    flags: u32,
) {
    // Bit 0: transa, bit 1: transb, bit 2: bias (runtime flags: one compiled kernel per
    // dtype serves every layout).
    let ta = (flags & 1u32) != 0;
    let tb = (flags & 2u32) != 0;
    let has_bias = (flags & 4u32) != 0;
    let tile = cube_index();
    if tile < tiles {
        let row0 = (tile / tiles_n) * TILE;
        let col0 = (tile % tiles_n) * TILE;
        let t = UNIT_POS_X as usize;
        // Plane p owns rows 32·(p / 2).., columns 32·(p % 2).. of the tile. The launch
        // checks that planes are 32 wide (cmma's fragments are spread over 32 units).
        let p = t / 32;
        let (pr, pc) = ((p / 2) * 32, (p % 2) * 32);
        // Staged slices in the dtype: sa[i][l] (TILE × FRAG), sb[l][j] (FRAG × TILE);
        // fragment loads need 32-byte aligned rows, which strides of 16 and 64 keep.
        let mut sa = SharedMemory::<F>::new_aligned(TILE * FRAG, 32usize);
        let mut sb = SharedMemory::<F>::new_aligned(FRAG * TILE, 32usize);
        let mut sc = SharedMemory::<f32>::new_aligned(TILE * TILE, 32usize);
        let acc00 =
            cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0);
        let acc01 =
            cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0);
        let acc10 =
            cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0);
        let acc11 =
            cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0);
        let zero = F::new(0.0);
        let mut k0 = 0usize;
        while k0 < k {
            // 1024 elements of each slice, 8 per thread.
            #[unroll]
            for r in 0..8usize {
                let e = t + r * CMMA_THREADS as usize;
                let i = select(ta, e % TILE, e / FRAG);
                let l = select(ta, e / TILE, e % FRAG);
                let (gi, gl) = (row0 + i, k0 + l);
                let mut va = zero;
                if gi < m && gl < k {
                    va = a_at(a, gi, gl, m, k, ta);
                }
                sa[i * FRAG + l] = va;
                let l2 = select(tb, e % FRAG, e / TILE);
                let j = select(tb, e / FRAG, e % TILE);
                let (gl2, gj) = (k0 + l2, col0 + j);
                let mut vb = zero;
                if gl2 < k && gj < n {
                    vb = b_at(b, gl2, gj, n, k, tb);
                }
                sb[l2 * TILE + j] = vb;
            }
            sync_cube();
            let a0 = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &sa.slice(pr * FRAG, (pr + 16) * FRAG),
                FRAG as u32,
            );
            let a1 = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &sa.slice((pr + 16) * FRAG, (pr + 32) * FRAG),
                FRAG as u32,
            );
            let b0 = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &sb.slice(pc, FRAG * TILE),
                TILE as u32,
            );
            let b1 = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &sb.slice(pc + 16, FRAG * TILE),
                TILE as u32,
            );
            cmma::execute::<F, F, f32, f32>(&a0, &b0, &acc00, &acc00);
            cmma::execute::<F, F, f32, f32>(&a0, &b1, &acc01, &acc01);
            cmma::execute::<F, F, f32, f32>(&a1, &b0, &acc10, &acc10);
            cmma::execute::<F, F, f32, f32>(&a1, &b1, &acc11, &acc11);
            sync_cube();
            k0 += FRAG;
        }
        let o = pr * TILE + pc;
        cmma::store(&mut sc.slice_mut(o, TILE * TILE), &acc00, TILE as u32, cmma::MatrixLayout::RowMajor);
        cmma::store(&mut sc.slice_mut(o + 16, TILE * TILE), &acc01, TILE as u32, cmma::MatrixLayout::RowMajor);
        cmma::store(&mut sc.slice_mut(o + 16 * TILE, TILE * TILE), &acc10, TILE as u32, cmma::MatrixLayout::RowMajor);
        cmma::store(&mut sc.slice_mut(o + 16 * TILE + 16, TILE * TILE), &acc11, TILE as u32, cmma::MatrixLayout::RowMajor);
        sync_cube();
        let mut e = t;
        while e < TILE * TILE {
            let (gi, gj) = (row0 + e / TILE, col0 + e % TILE);
            if gi < m && gj < n {
                let mut v = sc[e];
                if has_bias {
                    v += f32::cast_from(bias[gj]);
                }
                c[gi * n + gj] = F::cast_from(v);
            }
            e += CMMA_THREADS as usize;
        }
    }
}

/// Most rows (m) the skinny kernel serves; it keeps one accumulator per row.
const SKINNY_ROWS: usize = 8;
/// Output columns per cube of the skinny kernel: one per group of 32 units.
const SKINNY_COLS: usize = 8;

/// Few rows (m ≤ SKINNY_ROWS: decode, GEMV): a cube of 256 units computes 8 output
/// columns for every row; the 32 units of a group split k (stride 32, so x·Wᵀ reads each
/// weight row contiguously) and sum their partials through shared memory.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_skinny_kernel<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    bias: &Array<F>,
    c: &mut Array<F>,
    m: usize,
    n: usize,
    k: usize,
    groups: usize,
    flags: u32,
) {
    // Bit 0: transa, bit 1: transb, bit 2: bias (runtime flags: one compiled kernel per
    // dtype serves every layout).
    let ta = (flags & 1u32) != 0;
    let tb = (flags & 2u32) != 0;
    let has_bias = (flags & 4u32) != 0;
    let cube = cube_index();
    if cube < groups {
        let t = UNIT_POS_X as usize;
        let lane = t % 32;
        let j = cube * SKINNY_COLS + t / 32;
        let mut part = SharedMemory::<f32>::new(SKINNY_ROWS * TILED_THREADS as usize);
        let mut acc = Array::<f32>::new(SKINNY_ROWS);
        #[unroll]
        for i in 0..SKINNY_ROWS {
            acc[i] = 0.0;
        }
        if j < n {
            let mut l = lane;
            while l < k {
                let bv = f32::cast_from(b_at(b, l, j, n, k, tb));
                #[unroll]
                for i in 0..SKINNY_ROWS {
                    if i < m {
                        acc[i] += f32::cast_from(a_at(a, i, l, m, k, ta)) * bv;
                    }
                }
                l += 32;
            }
        }
        #[unroll]
        for i in 0..SKINNY_ROWS {
            part[i * TILED_THREADS as usize + t] = acc[i];
        }
        sync_cube();
        let mut stride = 16usize;
        while stride > 0 {
            if lane < stride {
                #[unroll]
                for i in 0..SKINNY_ROWS {
                    let o = i * TILED_THREADS as usize + t;
                    part[o] = part[o] + part[o + stride];
                }
            }
            sync_cube();
            stride /= 2;
        }
        if lane == 0 && j < n {
            #[unroll]
            for i in 0..SKINNY_ROWS {
                if i < m {
                    let mut v = part[i * TILED_THREADS as usize + t];
                    if has_bias {
                        v += f32::cast_from(bias[j]);
                    }
                    c[i * n + j] = F::cast_from(v);
                }
            }
        }
    }
}

/// Whether the device runs 16×16×16 cmma with `F` inputs and f32 accumulation in planes
/// of 32 units (the cmma kernel's layout).
fn has_cmma<R: Runtime, F: CubeElement>(d: &Device<R>) -> bool {
    let cfg = MmaConfig { a_type: F::cube_type(), b_type: F::cube_type(), cd_type: f32::cube_type(), m: 16, n: 16, k: 16 };
    let hw = &d.client.properties().hardware;
    d.client.properties().features.matmul.cmma.contains(&cfg) && hw.plane_size_min == 32 && hw.plane_size_max == 32
}

/// Which kernel `gemm` uses for m rows of `dtype` on this device: "skinny" (m ≤ 8),
/// "cmma" or "tiled".
pub fn gemm_kernel_name<R: Runtime>(d: &Device<R>, m: usize, dtype: DType) -> &'static str {
    match dtype {
        _ if m <= SKINNY_ROWS => "skinny",
        DType::F16 if has_cmma::<R, half::f16>(d) => "cmma",
        DType::BF16 if has_cmma::<R, half::bf16>(d) => "cmma",
        _ => "tiled",
    }
}

/// `gemm`: c = A·B (+ bias) in the dtype, accumulated in f32.
pub fn gemm<R: Runtime>(d: &Device<R>, p: &GemmParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "gemm";
    let (m, n, k) = (p.m, p.n, p.k);
    let a = input(OP, inputs, "a")?.handle.clone();
    let b = input(OP, inputs, "b")?.handle.clone();
    // Without a bias the kernel never reads it; `a` stands in for the binding.
    let (bias, bias_len) = match inputs.get("bias") {
        Some(t) if p.use_bias => (t.handle.clone(), n),
        _ => (a.clone(), 1),
    };
    let out = d.alloc(p.dtype, m * n);
    let kernel = gemm_kernel_name(d, m, p.dtype);
    let tiles_n = n.div_ceil(TILE);
    let tiles = m.div_ceil(TILE) * tiles_n;
    let groups = n.div_ceil(SKINNY_COLS);
    let (count, dim) = match kernel {
        "skinny" => grid_cubes(groups, TILED_THREADS),
        "cmma" => grid_cubes(tiles, CMMA_THREADS),
        _ => grid_cubes(tiles, TILED_THREADS),
    };
    let flags = u32::from(p.transa) | u32::from(p.transb) << 1 | u32::from(p.use_bias) << 2;
    let (a, b, bias, c) = (
        // SAFETY (of the views): a holds m·k and b k·n elements (`check_inputs`), bias n
        // when used (else never read), c was allocated for m·n.
        unsafe { ArrayArg::from_raw_parts(a, m * k) },
        unsafe { ArrayArg::from_raw_parts(b, k * n) },
        unsafe { ArrayArg::from_raw_parts(bias, bias_len) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), m * n) },
    );
    with_float!(p.dtype, F => {
        // SAFETY: each kernel reads A, B and bias only at in-range indices (row < m,
        // column < n, depth < k; the tiled and cmma kernels stage zeros elsewhere into
        // shared arrays sized for their tile, the skinny kernel's per-row accumulators
        // stop at m ≤ SKINNY_ROWS) and writes c only at row < m, column < n; cubes past
        // the last tile or column group return. The cmma kernel runs only where
        // `has_cmma` saw 32-wide planes and the 16×16×16 configuration.
        unsafe {
            match kernel {
                "skinny" => gemm_skinny_kernel::launch_unchecked::<F, R>(&d.client, count, dim, a, b, bias, c, m, n, k, groups, flags),
                "cmma" => gemm_cmma_kernel::launch_unchecked::<F, R>(&d.client, count, dim, a, b, bias, c, m, n, k, tiles_n, tiles, flags),
                _ => gemm_tiled_kernel::launch_unchecked::<F, R>(&d.client, count, dim, a, b, bias, c, m, n, k, tiles_n, tiles, flags),
            }
        }
    });
    Ok(GpuTensors::from([("c".to_string(), GpuTensor::new(out, p.dtype, &[m, n]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::Gemm(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}
