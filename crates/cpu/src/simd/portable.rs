//! The portable kernels: plain Rust that every architecture compiles (the compiler
//! vectorizes the integer sums). Each weight block is decoded once to integer levels
//! and used for all the activation rows of the call.
//!
//! Per activation block `b` (32 values) a kernel adds `(d_w · d_x[b]) · Σ w_q·x_q`
//! to an f32 accumulator, the integer sum exact; formats with a min add
//! `(m_w) · s_x[b]` (32-element formats) or `(dmin · m_j) · s_x[b]` (Q4_K, Q5_K) or
//! `(dmin · d_x[b]) · Σ m_j·x_q` (Q2_K, mins per 16) to a second accumulator. The
//! AVX2 kernels compute the same products, summed in another order.

use super::{block_scale, check_f32, check_q8, Q8Ref, QB};
use crate::quant::{k4_scale_min, q3k_scale};
use half::{bf16, f16};

/// Quantize `x` into 8-bit blocks (see the module doc of `simd`); bit-identical to the AVX2 quantizer.
pub(crate) fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((xb, qb), d), s) in x.chunks_exact(QB).zip(qs.chunks_exact_mut(QB)).zip(d.iter_mut()).zip(s.iter_mut()) {
        let has_nan = xb.iter().any(|v| v.is_nan());
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        match block_scale(amax, has_nan) {
            None => {
                qb.fill(0);
                *d = f32::NAN;
                *s = f32::NAN;
            }
            Some((dd, id)) => {
                let mut sum = 0i32;
                for (q, &v) in qb.iter_mut().zip(xb) {
                    let l = ((v * id).round_ties_even() as i32).clamp(-127, 127);
                    *q = l as i8;
                    sum += l;
                }
                *d = dd;
                *s = dd * sum as f32;
            }
        }
    }
}

#[inline(always)]
fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

/// Σ a·b over N levels (a multiple of 16), exact: pairs of products summed in i32, in
/// eight lanes (the shape of SSE2's `pmaddwd`, which compilers then use).
#[inline(always)]
fn isum<const N: usize>(a: &[i8], b: &[i8]) -> i32 {
    let (a, b): (&[i8; N], &[i8; N]) = (a.try_into().unwrap(), b.try_into().unwrap());
    let mut acc = [0i32; 8];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..8 {
            acc[l] += i32::from(ca[2 * l]) * i32::from(cb[2 * l]) + i32::from(ca[2 * l + 1]) * i32::from(cb[2 * l + 1]);
        }
    }
    acc.iter().sum()
}

/// Σ b over N levels.
#[inline(always)]
fn lsum<const N: usize>(b: &[i8]) -> i32 {
    let b: &[i8; N] = b.try_into().unwrap();
    b.iter().map(|&v| i32::from(v)).sum()
}

/// Activation block `b` of row `x`.
#[inline(always)]
fn xq<'a>(x: &Q8Ref<'a>, b: usize) -> &'a [i8] {
    &x.qs[b * QB..(b + 1) * QB]
}

/// Dispatch on the shape of the call: `C = out.len() / xs.len()` weight rows, each run
/// on its own against the `R = xs.len()` activation rows by a kernel monomorphized for R.
macro_rules! by_rows {
    ($name:ident => $kern:ident, $x:ty) => {
        fn $name(w: &[u8], xs: &[$x], out: &mut [f32]) {
            assert!(!xs.is_empty() && out.len() % xs.len() == 0 && out.len() > 0, "row kernel: bad shape");
            let c = out.len() / xs.len();
            let rb = w.len() / c;
            assert!(rb * c == w.len(), "row kernel: bad weight rows");
            for (w, out) in w.chunks_exact(rb).zip(out.chunks_exact_mut(xs.len())) {
                match xs.len() {
                    1 => $kern::<1>(w, xs, out),
                    2 => $kern::<2>(w, xs, out),
                    3 => $kern::<3>(w, xs, out),
                    4 => $kern::<4>(w, xs, out),
                    8 => $kern::<8>(w, xs, out),
                    r => panic!("row kernel: no shape with {r} activation rows"),
                }
            }
        }
    };
}

/// The 32-element formats: `dec` gives a block's scale, min (0 without one) and levels.
#[inline(always)]
fn blocks32<const R: usize, const BYTES: usize, const AFFINE: bool>(
    w: &[u8],
    xs: &[Q8Ref],
    out: &mut [f32],
    dec: impl Fn(&[u8]) -> (f32, f32, [i8; QB]),
) {
    check_q8(w, BYTES, QB, xs, out);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let (mut acc, mut macc) = ([0f32; R], [0f32; R]);
    let nb = w.len() / BYTES;
    // The min terms go to a buffer and are summed after the integer dots (in the same
    // loop they kept the compiler from vectorizing the dots).
    let mut mins = [0f32; 64];
    let mut b0 = 0;
    while b0 < nb {
        let cn = (nb - b0).min(64);
        for (i, blk) in w[b0 * BYTES..(b0 + cn) * BYTES].chunks_exact(BYTES).enumerate() {
            let b = b0 + i;
            let (d, m, q) = dec(blk);
            mins[i] = m;
            for r in 0..R {
                let x = &xs[r];
                acc[r] += (d * x.d[b]) * isum::<QB>(&q, xq(x, b)) as f32;
            }
        }
        if AFFINE {
            for r in 0..R {
                for (m, s) in mins[..cn].iter().zip(&xs[r].s[b0..b0 + cn]) {
                    macc[r] += m * s;
                }
            }
        }
        b0 += cn;
    }
    for r in 0..R {
        out[r] = acc[r] + macc[r];
    }
}

/// Byte `t` of entry `v` is 0x10 where bit `t` of `v` is set: the fifth bits of eight
/// Q5 levels from one `qh` byte.
const FIFTH_BITS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut b = 0;
        while b < 8 {
            if v >> b & 1 == 1 {
                t[v] |= 0x10 << (8 * b);
            }
            b += 1;
        }
        v += 1;
    }
    t
};

/// The 32 five-bit levels of a Q5_0/Q5_1 block (as `quant::q5_levels`, table-driven).
#[inline(always)]
fn q5(qh: &[u8], qs: &[u8]) -> [u8; QB] {
    let mut hi = [0u8; QB];
    for (h, &b) in hi.chunks_exact_mut(8).zip(qh) {
        h.copy_from_slice(&FIFTH_BITS[usize::from(b)].to_le_bytes());
    }
    let mut q = [0u8; QB];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | hi[j];
        q[j + 16] = (qs[j] >> 4) | hi[j + 16];
    }
    q
}

fn q4_0<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    blocks32::<R, 18, false>(w, xs, out, |b| {
        let mut q = [0i8; QB];
        for j in 0..16 {
            q[j] = (b[2 + j] & 0x0F) as i8 - 8;
            q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
        }
        (f16_at(b, 0), 0.0, q)
    })
}

// Q4_1, Q5_1, Q4_K and Q5_K run on centred levels (q − 8 or q − 16, with the min raised
// by as much): the same values, and signed levels vectorize where unsigned ones did not.

fn q4_1<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    blocks32::<R, 20, true>(w, xs, out, |b| {
        let mut q = [0i8; QB];
        for j in 0..16 {
            q[j] = (b[4 + j] & 0x0F) as i8 - 8;
            q[j + 16] = (b[4 + j] >> 4) as i8 - 8;
        }
        let d = f16_at(b, 0);
        (d, f16_at(b, 2) + 8.0 * d, q)
    })
}

fn q5_0<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    blocks32::<R, 22, false>(w, xs, out, |b| (f16_at(b, 0), 0.0, q5(&b[2..6], &b[6..22]).map(|v| v as i8 - 16)))
}

fn q5_1<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    blocks32::<R, 24, true>(w, xs, out, |b| {
        let d = f16_at(b, 0);
        (d, f16_at(b, 2) + 16.0 * d, q5(&b[4..8], &b[8..24]).map(|v| v as i8 - 16))
    })
}

fn q8_0<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    blocks32::<R, 34, false>(w, xs, out, |b| {
        let mut q = [0i8; QB];
        for (q, &v) in q.iter_mut().zip(&b[2..34]) {
            *q = v as i8;
        }
        (f16_at(b, 0), 0.0, q)
    })
}

/// Q4_K and Q5_K (`Q5` adds the fifth bit): eight sub-blocks of 32, each one activation block.
#[inline(always)]
fn q45_k<const R: usize, const BYTES: usize, const Q5: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    check_q8(w, BYTES, 256, xs, out);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let (mut acc, mut macc) = ([0f32; R], [0f32; R]);
    for (sb, b) in w.chunks_exact(BYTES).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let (qh, qs) = if Q5 { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
        let mut dm = [0f32; 8];
        for j in 0..8 {
            let (sc, m) = k4_scale_min(scales, j);
            let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let o: i8 = if Q5 { 16 } else { 8 };
            let mut q = [0i8; QB];
            for l in 0..QB {
                let hi = if Q5 { ((qh[l] >> j) & 1) << 4 } else { 0 };
                q[l] = (((chunk[l] >> shift) & 0x0F) | hi) as i8 - o;
            }
            let xb = 8 * sb + j;
            dm[j] = dmin * f32::from(m) - f32::from(o) * (d * f32::from(sc));
            for r in 0..R {
                let x = &xs[r];
                acc[r] += (d * x.d[xb]) * (i32::from(sc) * isum::<QB>(&q, xq(x, xb))) as f32;
            }
        }
        // The min terms after the integer dots (see `blocks32`).
        for r in 0..R {
            for (m, s) in dm.iter().zip(&xs[r].s[8 * sb..8 * sb + 8]) {
                macc[r] += m * s;
            }
        }
    }
    for r in 0..R {
        out[r] = acc[r] - macc[r];
    }
}

fn q4_k<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    q45_k::<R, 144, false>(w, xs, out)
}

fn q5_k<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    q45_k::<R, 176, true>(w, xs, out)
}

/// The formats with sixteen sub-blocks of 16 (Q2_K, Q3_K, Q6_K): per run of 32 values
/// (one activation block), `dec(block, run)` gives the signed levels, the two integer
/// sub-block scales and (Q2_K) the two integer mins.
#[inline(always)]
fn k16<const R: usize, const BYTES: usize, const MINS: bool>(
    w: &[u8],
    xs: &[Q8Ref],
    out: &mut [f32],
    scales: impl Fn(&[u8]) -> (f32, f32),
    dec: impl Fn(&[u8], usize) -> ([i8; QB], [i32; 2], [i32; 2]),
) {
    check_q8(w, BYTES, 256, xs, out);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let (mut acc, mut macc) = ([0f32; R], [0f32; R]);
    for (sb, b) in w.chunks_exact(BYTES).enumerate() {
        let (d, dmin) = scales(b);
        for run in 0..8 {
            let (q, sc, m) = dec(b, run);
            let xb = 8 * sb + run;
            for r in 0..R {
                let x = &xs[r];
                let y = xq(x, xb);
                let s = sc[0] * isum::<16>(&q[..16], &y[..16]) + sc[1] * isum::<16>(&q[16..], &y[16..]);
                acc[r] += (d * x.d[xb]) * s as f32;
                if MINS {
                    let ms = m[0] * lsum::<16>(&y[..16]) + m[1] * lsum::<16>(&y[16..]);
                    macc[r] += (dmin * x.d[xb]) * ms as f32;
                }
            }
        }
    }
    for r in 0..R {
        out[r] = acc[r] - macc[r];
    }
}

fn q2_k<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    k16::<R, 84, true>(
        w,
        xs,
        out,
        |b| (f16_at(b, 80), f16_at(b, 82)),
        |b, run| {
            let (h, k) = (run / 4, run % 4);
            let qs = &b[16 + 32 * h..16 + 32 * h + 32];
            let mut q = [0i8; QB];
            for l in 0..QB {
                q[l] = ((qs[l] >> (2 * k)) & 3) as i8;
            }
            let (s0, s1) = (b[2 * run], b[2 * run + 1]);
            (q, [i32::from(s0 & 15), i32::from(s1 & 15)], [i32::from(s0 >> 4), i32::from(s1 >> 4)])
        },
    )
}

fn q3_k<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    k16::<R, 110, false>(
        w,
        xs,
        out,
        |b| (f16_at(b, 108), 0.0),
        |b, run| {
            let (h, k) = (run / 4, run % 4);
            let (hmask, qs, scales) = (&b[0..32], &b[32 + 32 * h..64 + 32 * h], &b[96..108]);
            let mut q = [0i8; QB];
            for l in 0..QB {
                let low = (qs[l] >> (2 * k)) & 3;
                let high = (hmask[l] >> run) & 1;
                q[l] = (low | (high << 2)) as i8 - 4;
            }
            let sc = |j: usize| i32::from(q3k_scale(scales, j)) - 32;
            (q, [sc(2 * run), sc(2 * run + 1)], [0, 0])
        },
    )
}

fn q6_k<const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    k16::<R, 210, false>(
        w,
        xs,
        out,
        |b| (f16_at(b, 208), 0.0),
        |b, run| {
            let (h, k) = (run / 4, run % 4);
            let ql = &b[64 * h + 32 * (k % 2)..64 * h + 32 * (k % 2) + 32];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let mut q = [0i8; QB];
            for l in 0..QB {
                q[l] = (((ql[l] >> (4 * (k / 2))) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4)) as i8 - 32;
            }
            let sc = |j: usize| i32::from(b[192 + j] as i8);
            (q, [sc(2 * run), sc(2 * run + 1)], [0, 0])
        },
    )
}

/// F32, F16, BF16 weights against f32 activations, eight accumulators per row.
#[inline(always)]
fn floats<const R: usize, const BYTES: usize>(w: &[u8], xs: &[&[f32]], out: &mut [f32], cvt: impl Fn(&[u8]) -> f32) {
    let k = check_f32(w, BYTES, xs, out);
    let xs: &[&[f32]; R] = xs.try_into().unwrap();
    let mut acc = [[0f32; 8]; R];
    let full = k / 8 * 8;
    for c in (0..full).step_by(8) {
        let mut wv = [0f32; 8];
        for (i, v) in wv.iter_mut().enumerate() {
            *v = cvt(&w[(c + i) * BYTES..(c + i + 1) * BYTES]);
        }
        for r in 0..R {
            let x = &xs[r][c..c + 8];
            for i in 0..8 {
                acc[r][i] += wv[i] * x[i];
            }
        }
    }
    for r in 0..R {
        let mut t = 0f32;
        for i in full..k {
            t += cvt(&w[i * BYTES..(i + 1) * BYTES]) * xs[r][i];
        }
        let a = &acc[r];
        out[r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + t;
    }
}

fn f32_k<const R: usize>(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    floats::<R, 4>(w, xs, out, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn f16_k<const R: usize>(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    floats::<R, 2>(w, xs, out, |b| f16::from_le_bytes([b[0], b[1]]).to_f32())
}

fn bf16_k<const R: usize>(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    floats::<R, 2>(w, xs, out, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
}

by_rows!(q4_0_rows => q4_0, Q8Ref);
by_rows!(q4_1_rows => q4_1, Q8Ref);
by_rows!(q5_0_rows => q5_0, Q8Ref);
by_rows!(q5_1_rows => q5_1, Q8Ref);
by_rows!(q8_0_rows => q8_0, Q8Ref);
by_rows!(q2_k_rows => q2_k, Q8Ref);
by_rows!(q3_k_rows => q3_k, Q8Ref);
by_rows!(q4_k_rows => q4_k, Q8Ref);
by_rows!(q5_k_rows => q5_k, Q8Ref);
by_rows!(q6_k_rows => q6_k, Q8Ref);
by_rows!(f32_rows => f32_k, &[f32]);
by_rows!(f16_rows => f16_k, &[f32]);
by_rows!(bf16_rows => bf16_k, &[f32]);

// The portable row kernel of a weight format.
super::kernel_table!(rows);

/// The portable vector operations of [`super::attend_with`]: eight f32 lanes in an array
/// (the compiler vectorizes them), unfused products, and the key reduction
/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`.
pub(crate) struct Lanes8;

impl super::Lanes for Lanes8 {
    type V = [f32; 8];
    const W: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        // SAFETY (of the caller): `p` points at 8 readable f32.
        p.cast::<[f32; 8]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        p.cast::<[f32; 8]>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i] * c[i])
    }
    #[inline(always)]
    unsafe fn fma_n(a: [f32; 8], b: [f32; 8], e: f32) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + e * b[i])
    }
    #[inline(always)]
    unsafe fn mul_n(a: [f32; 8], e: f32) -> [f32; 8] {
        a.map(|x| x * e)
    }
    #[inline(always)]
    unsafe fn sum4(a: [[f32; 8]; 4]) -> [f32; 4] {
        a.map(|a| ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])))
    }
    #[inline(always)]
    unsafe fn softmax(s: &mut [f32]) -> f32 {
        super::softmax_in_place(s)
    }
}
