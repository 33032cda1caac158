//! Row-dot kernels of the CPU fast path: one weight row (in its stored format) against
//! up to [`MAX_ROWS`] activation rows.
//!
//! For the GGUF block formats the activations are first quantized to 8 bits, as ggml
//! does: blocks of 32 values with an f32 scale `d = max|x| / 127`, levels
//! `q = round_half_even(x / d)` in −127..=127, and `s = d · Σq` (the block sum that the
//! formats with a min need). Unlike ggml the scale stays f32 and every format (the
//! K-quants too) uses blocks of 32: a K-quant sub-block of 16 or 32 always lies inside
//! one activation block, and a scale per 32 values follows outlier channels more closely
//! than ggml's one scale per 256 (`block_q8_K`). The dot product of a weight block with an
//! activation block is then an exact integer sum, scaled once in f32.
//!
//! F32, F16 and BF16 weights keep f32 activations (F16/BF16 are widened in registers).
//!
//! Every kernel exists in portable Rust ([`portable`]) and with intrinsics: AVX2 + FMA +
//! F16C (`avx2`, x86-64 only), NEON (`neon`, aarch64 only, `sdot` where the CPU has the
//! dot-product extension), and for the formats of the common model files (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) AVX-512 VNNI (`avx512`, which uses the AVX2
//! kernels for the other formats, the quantizer and [`attend`]). The path is chosen at
//! run time by [`Isa::best`] (or forced with `INGOT_CPU_ISA`). All paths quantize
//! activations bit-identically; their dot products differ only in the order of the
//! f32 additions. A kernel's arithmetic for one (weight row, activation row) pair does
//! not depend on how many activation rows it handles at once, so results do not depend
//! on the batch. The NEON path is checked under qemu user-mode emulation
//! (`scripts/test.sh`), with and without the dot-product extension.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod portable;

use ingot_core::DType;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Values per activation block.
pub const QB: usize = 32;
/// Most activation rows one kernel call handles (they share each decoded weight block).
pub const MAX_ROWS: usize = 8;

/// An instruction-set path for the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, on every architecture.
    Portable,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 F, BW, VL and VNNI (with AVX2, FMA and F16C).
    Avx512,
    /// aarch64 NEON (Advanced SIMD), with `sdot` where the CPU has the dot-product extension.
    Neon,
}

impl Isa {
    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon => false,
        }
    }

    /// Every path this build knows, slowest first (whether or not this CPU can run it).
    pub const ALL: &'static [Isa] = &[Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The path named `s` (`portable`, `avx2`, …: the lower-case variant name).
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.iter().copied().find(|i| i.name() == s)
    }

    /// The path's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// The fastest path this CPU can run, or the one the environment variable
    /// `INGOT_CPU_ISA` names (for comparisons); decided once. A name that is unknown or
    /// that this CPU cannot run gives a warning on stderr and the fastest path.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let (isa, warning) = Isa::choose(std::env::var("INGOT_CPU_ISA").ok().as_deref());
            if let Some(w) = warning {
                eprintln!("{w}");
            }
            isa
        })
    }

    /// The fastest path this CPU can run.
    pub fn fastest() -> Isa {
        Isa::ALL.iter().rev().copied().find(|i| i.available()).unwrap_or(Isa::Portable)
    }

    /// The path for a value of `INGOT_CPU_ISA` (`None` or empty: the fastest), and the
    /// warning to print when the value names no path or one this CPU cannot run.
    pub fn choose(requested: Option<&str>) -> (Isa, Option<String>) {
        let fastest = Isa::fastest();
        let Some(name) = requested.map(str::trim).filter(|s| !s.is_empty()) else { return (fastest, None) };
        match Isa::parse(&name.to_ascii_lowercase()) {
            Some(i) if i.available() => (i, None),
            Some(i) => (
                fastest,
                Some(format!("warning: INGOT_CPU_ISA={name}: this CPU cannot run the {} path; using {}", i.name(), fastest.name())),
            ),
            None => {
                let known: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
                (
                    fastest,
                    Some(format!("warning: INGOT_CPU_ISA={name} is not a known path ({}); using {}", known.join(", "), fastest.name())),
                )
            }
        }
    }
}

/// One activation row quantized to 8-bit blocks of [`QB`]: `qs` has the row's `k`
/// levels, `d` and `s` one scale and one scaled sum (`d · Σq`) per block, `bs` the
/// integer sum of each 16 levels (for the K-quants with sub-blocks of 16).
#[derive(Clone, Copy, Debug)]
pub struct Q8Ref<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub bs: &'a [i16],
}

/// Activation rows quantized by [`Q8Rows::quantize`]; the buffers are kept for reuse.
#[derive(Default, Debug)]
pub struct Q8Rows {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    bs: Vec<i16>,
    k: usize,
}

impl Q8Rows {
    /// Quantize the `x.len() / k` rows of `x`, each of `k` values (a multiple of [`QB`]).
    ///
    /// A block holding a NaN or an infinity gets `d = s = NaN` and zero levels, so
    /// that every dot product with it is NaN, as it would be in f32.
    pub fn quantize(&mut self, isa: Isa, x: &[f32], k: usize) {
        assert!(k % QB == 0 && k > 0 && x.len() % k == 0, "quantize: {} values are not rows of {k}, a multiple of {QB}", x.len());
        let nb = x.len() / QB;
        self.k = k;
        self.qs.resize(x.len(), 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.bs.resize(2 * nb, 0);
        type Quantizer = fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);
        let f: Quantizer = match isa {
            // SAFETY: the closure runs only where the CPU has AVX2, FMA and F16C (the AVX-512
            // path checks them too, and quantizes with the AVX2 code).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if isa.available() => |x, qs, d, s| unsafe { avx2::quantize(x, qs, d, s) },
            // SAFETY: the closure runs only where the CPU has NEON.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if isa.available() => |x, qs, d, s| unsafe { neon::quantize(x, qs, d, s) },
            _ => portable::quantize,
        };
        // Blocks are independent: large inputs are split among threads.
        const CHUNK: usize = 256;
        if x.len() < 64 * CHUNK * QB {
            f(x, &mut self.qs, &mut self.d, &mut self.s);
        } else {
            x.par_chunks(CHUNK * QB)
                .zip(self.qs.par_chunks_mut(CHUNK * QB))
                .zip(self.d.par_chunks_mut(CHUNK))
                .zip(self.s.par_chunks_mut(CHUNK))
                .for_each(|(((x, qs), d), s)| f(x, qs, d, s));
        }
        for (b, q) in self.bs.iter_mut().zip(self.qs.chunks_exact(16)) {
            *b = q.iter().map(|&v| i16::from(v)).sum();
        }
    }

    /// Row `i` of the last [`Q8Rows::quantize`].
    pub fn row(&self, i: usize) -> Q8Ref<'_> {
        let (k, b) = (self.k, self.k / QB);
        Q8Ref {
            qs: &self.qs[i * k..(i + 1) * k],
            d: &self.d[i * b..(i + 1) * b],
            s: &self.s[i * b..(i + 1) * b],
            bs: &self.bs[2 * i * b..2 * (i + 1) * b],
        }
    }
}

/// The scale `d` and inverse scale of a block of 32 values from its largest magnitude,
/// the arithmetic both paths share. `None` for a block holding a NaN or an infinity.
/// A block too small for `1/d` to be finite (|x| < ~1e-36) quantizes to zero.
#[inline(always)]
pub(crate) fn block_scale(amax: f32, has_nan: bool) -> Option<(f32, f32)> {
    if has_nan || !amax.is_finite() {
        return None;
    }
    let d = amax / 127.0;
    let id = 1.0 / d;
    Some(if d == 0.0 || !id.is_finite() { (0.0, 0.0) } else { (d, id) })
}

/// `out[c · R + r] = W_c · x_r` for `C` consecutive weight rows (their bytes) and `R`
/// quantized activation rows, `C = out.len() / R`; the shapes are `1 × 1..=4`, `1 × 8`,
/// `2 × 1` and `4 × 1`.
///
/// # Safety
/// The kernel's path must be available on this CPU (see [`kernels`]).
pub type QDot = unsafe fn(&[u8], &[Q8Ref<'_>], &mut [f32]);
/// As [`QDot`] for f32 activation rows.
///
/// # Safety
/// As [`QDot`].
pub type FDot = unsafe fn(&[u8], &[&[f32]], &mut [f32]);

/// The row kernel of a weight format.
#[derive(Clone, Copy)]
pub enum RowKernel {
    /// Takes activations quantized by [`Q8Rows`].
    Q8(QDot),
    /// Takes f32 activations.
    F32(FDot),
}

/// The row kernel of `dtype` on path `isa`; `None` for a dtype that is not a weight
/// format or a path this CPU cannot run. Every weight format has a kernel on every path.
pub fn kernels(isa: Isa, dtype: DType) -> Option<RowKernel> {
    if !isa.available() {
        return None;
    }
    match isa {
        Isa::Portable => portable::kernel(dtype),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::kernel(dtype),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::kernel(dtype),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => None,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::kernel(dtype),
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Neon => None,
    }
}

/// Check what every kernel assumes of its arguments and return the blocks per row:
/// `xs` holds 1..=[`MAX_ROWS`] activation rows of one length `k`, `out` `C·xs.len()`
/// values, `w` exactly `C` rows of `k / elems` blocks of `bytes` bytes.
#[inline(always)]
pub(crate) fn check_q8(w: &[u8], bytes: usize, elems: usize, xs: &[Q8Ref], out: &[f32]) -> usize {
    assert!(!xs.is_empty() && xs.len() <= MAX_ROWS && out.len() % xs.len() == 0, "row kernel: bad activation rows");
    let c = out.len() / xs.len();
    let k = xs[0].qs.len();
    let nb = k / elems;
    assert!(k == nb * elems && (1..=4).contains(&c) && w.len() == c * nb * bytes, "row kernel: bad weight rows");
    for x in xs {
        assert!(
            x.qs.len() == k && x.d.len() == k / QB && x.s.len() == k / QB && x.bs.len() == k / 16,
            "row kernel: activation rows differ in length"
        );
    }
    nb
}

/// As [`check_q8`] for f32 activations; returns the row length.
#[inline(always)]
pub(crate) fn check_f32(w: &[u8], bytes: usize, xs: &[&[f32]], out: &[f32]) -> usize {
    assert!(!xs.is_empty() && xs.len() <= MAX_ROWS && out.len() % xs.len() == 0, "row kernel: bad activation rows");
    let c = out.len() / xs.len();
    let k = xs[0].len();
    assert!((1..=4).contains(&c) && w.len() == c * k * bytes, "row kernel: bad weight rows");
    for x in xs {
        assert!(x.len() == k, "row kernel: activation rows differ in length");
    }
    k
}

/// `s ← exp(s − max s)` in place; returns the sum (at least 1: the max maps to 1).
#[inline]
pub(crate) fn softmax_in_place(s: &mut [f32]) -> f32 {
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0f32;
    for x in s.iter_mut() {
        *x = (*x - m).exp();
        z += *x;
    }
    z
}

/// Causal attention of one query against keys `lo..=hi` of one kv head; see
/// [`crate::fast::attention`]. Key `j` is `k[j * stride + off..][..q.len()]`, values
/// likewise; `s` is scratch, `o` gets `q.len()` values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    softcap: f32,
    s: &mut Vec<f32>,
    o: &mut [f32],
) {
    match isa {
        // SAFETY: the path is available on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.available() => unsafe { avx2::attend(q, k, v, stride, off, lo, hi, scale, softcap, s, o) },
        // SAFETY: the path is available on this CPU.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.available() => unsafe { neon::attend(q, k, v, stride, off, lo, hi, scale, softcap, s, o) },
        // SAFETY: the portable lanes are plain Rust.
        _ => unsafe { attend_with::<portable::Lanes8>(q, k, v, stride, off, lo, hi, scale, softcap, s, o) },
    }
}

/// The f32 vector operations of one instruction set that [`attend_with`] is written in.
/// Implementations are zero-sized types in the ISA's module; every method is
/// `#[inline(always)]`, so inlined into the ISA's `#[target_feature]` entry point (the
/// only caller) it compiles to that ISA's instructions.
pub(crate) trait Lanes {
    /// A vector of [`Lanes::W`] f32 lanes.
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// `W` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// `W` values to `p` (unaligned).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a + b · c` per lane (fused where the ISA fuses).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b · e` per lane, `e` broadcast (fused where the ISA fuses).
    unsafe fn fma_n(a: Self::V, b: Self::V, e: f32) -> Self::V;
    /// `a · e` per lane.
    unsafe fn mul_n(a: Self::V, e: f32) -> Self::V;
    /// Lane `i`: the sum of the lanes of `a[i]`, in the ISA's fixed order.
    unsafe fn sum4(a: [Self::V; 4]) -> [f32; 4];
    /// `s ← exp(s − max s)` in place; returns the sum.
    unsafe fn softmax(s: &mut [f32]) -> f32;
}

/// [`attend`] over the vector operations `L`: the one skeleton every path instantiates
/// (each its own inner operations). Scores four keys at a time (a partial last group
/// repeats its last key; those lanes are dropped and lanes do not mix), each key with its
/// own accumulator and the same reduction, so a key's score does not depend on `lo`;
/// then the soft cap, the softmax, and `o = Σ_j p_j · v_j` with 64 values of `o` in
/// registers per pass over the values.
///
/// # Safety
/// The instructions of `L` must be available on this CPU.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_with<L: Lanes>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    softcap: f32,
    s: &mut Vec<f32>,
    o: &mut [f32],
) {
    let d = q.len();
    let n = hi + 1 - lo;
    assert!(o.len() == d && hi * stride + off + d <= k.len().min(v.len()), "attend: out of bounds");
    s.clear();
    s.resize(n + 3, 0.0);
    let dw = d / L::W * L::W;
    let qp = q.as_ptr();
    let key = |j: usize| k.as_ptr().add((lo + j) * stride + off);
    let mut j = 0;
    while j < n {
        let cnt = (n - j).min(4);
        let kp = [key(j), key(j + 1.min(cnt - 1)), key(j + 2.min(cnt - 1)), key(j + 3.min(cnt - 1))];
        let mut a = [L::zero(); 4];
        for c in (0..dw).step_by(L::W) {
            let qv = L::load(qp.add(c));
            for i in 0..4 {
                a[i] = L::fma(a[i], qv, L::load(kp[i].add(c)));
            }
        }
        let mut x = L::sum4(a);
        if dw < d {
            for (i, x) in x.iter_mut().enumerate() {
                let mut t = 0f32;
                for (c, &qc) in q.iter().enumerate().skip(dw) {
                    t += qc * *kp[i].add(c);
                }
                *x += t;
            }
        }
        // Four scores (`s` has three spare places at its end).
        for (i, x) in x.iter().enumerate() {
            s[j + i] = x * scale;
        }
        if softcap > 0.0 {
            for sj in &mut s[j..j + cnt] {
                *sj = softcap * (*sj / softcap).tanh();
            }
        }
        j += cnt;
    }
    s.truncate(n);
    let inv = 1.0 / L::softmax(s);
    let val = |j: usize| v.as_ptr().add((lo + j) * stride + off);
    // 64 values of o (64 / W vectors, at most 16) in registers per pass over the values.
    const BLOCK: usize = 64;
    let acc = BLOCK / L::W;
    debug_assert!(acc <= 16 && acc * L::W == BLOCK);
    let mut c0 = 0;
    while c0 + BLOCK <= dw {
        let mut a = [L::zero(); 16];
        for (j, &e) in s.iter().enumerate() {
            let vp = val(j).add(c0);
            for (u, a) in a.iter_mut().enumerate().take(acc) {
                *a = L::fma_n(*a, L::load(vp.add(L::W * u)), e);
            }
        }
        for (u, a) in a.iter().enumerate().take(acc) {
            L::store(o.as_mut_ptr().add(c0 + L::W * u), L::mul_n(*a, inv));
        }
        c0 += BLOCK;
    }
    while c0 < dw {
        let mut a = L::zero();
        for (j, &e) in s.iter().enumerate() {
            a = L::fma_n(a, L::load(val(j).add(c0)), e);
        }
        L::store(o.as_mut_ptr().add(c0), L::mul_n(a, inv));
        c0 += L::W;
    }
    for (c, o) in o.iter_mut().enumerate().skip(dw) {
        let mut a = 0f32;
        for (j, &e) in s.iter().enumerate() {
            a += e * *val(j).add(c);
        }
        *o = a * inv;
    }
}

/// An instruction set's `attend` entry point: [`attend_with`] over its [`Lanes`] type,
/// compiled with its target features (so the `#[inline(always)]` skeleton and lane
/// operations inline into it as that ISA's instructions).
macro_rules! attend_entry {
    ($lanes:ty, $features:literal) => {
        /// One query against keys `lo..=hi` of one kv head: [`super::attend_with`] over
        /// this path's lanes (see [`super::attend`]).
        ///
        /// # Safety
        /// The CPU must have this path's features.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn attend(
            q: &[f32],
            k: &[f32],
            v: &[f32],
            stride: usize,
            off: usize,
            lo: usize,
            hi: usize,
            scale: f32,
            softcap: f32,
            s: &mut Vec<f32>,
            o: &mut [f32],
        ) {
            super::attend_with::<$lanes>(q, k, v, stride, off, lo, hi, scale, softcap, s, o)
        }
    };
}
pub(crate) use attend_entry;

/// A path's `kernel(dtype)`: the table of its row kernels. `kernel_table!(rows)` names
/// the kernels of every weight format by the convention `f32_rows`, …, `q6_k_rows` (in
/// scope where it expands); `kernel_table!(rows; FORMAT…; else FALLBACK)` lists only the
/// block formats a path has its own kernels for and asks `FALLBACK(dtype)` for the rest;
/// `kernel_table!(pick PICK)` builds every block format's kernel as `PICK(with, without)`
/// from the `…_dp` and `…_base` variants (NEON with and without `sdot`).
macro_rules! kernel_table {
    (rows) => {
        $crate::simd::kernel_table!(rows; Q4_0 q4_0_rows, Q4_1 q4_1_rows, Q5_0 q5_0_rows, Q5_1 q5_1_rows, Q8_0 q8_0_rows,
            Q2_K q2_k_rows, Q3_K q3_k_rows, Q4_K q4_k_rows, Q5_K q5_k_rows, Q6_K q6_k_rows; floats);
    };
    (rows; $($dt:ident $f:ident),* ; floats) => {
        pub(super) fn kernel(dtype: ingot_core::DType) -> Option<super::RowKernel> {
            use super::RowKernel;
            Some(match dtype {
                ingot_core::DType::F32 => RowKernel::F32(f32_rows),
                ingot_core::DType::F16 => RowKernel::F32(f16_rows),
                ingot_core::DType::BF16 => RowKernel::F32(bf16_rows),
                $(ingot_core::DType::$dt => RowKernel::Q8($f),)*
                _ => return None,
            })
        }
    };
    (rows; $($dt:ident $f:ident),* ; else $fallback:path) => {
        pub(super) fn kernel(dtype: ingot_core::DType) -> Option<super::RowKernel> {
            use super::RowKernel;
            Some(match dtype {
                $(ingot_core::DType::$dt => RowKernel::Q8($f),)*
                _ => return $fallback(dtype),
            })
        }
    };
    (pick $pick:ident; $($dt:ident $with:ident $without:ident),* $(,)?) => {
        pub(super) fn kernel(dtype: ingot_core::DType) -> Option<super::RowKernel> {
            use super::RowKernel;
            Some(match dtype {
                ingot_core::DType::F32 => RowKernel::F32(f32_rows),
                ingot_core::DType::F16 => RowKernel::F32(f16_rows),
                ingot_core::DType::BF16 => RowKernel::F32(bf16_rows),
                $(ingot_core::DType::$dt => $pick($with, $without),)*
                _ => return None,
            })
        }
    };
}
pub(crate) use kernel_table;

#[cfg(test)]
mod tests;
