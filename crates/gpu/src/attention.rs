//! Paged attention: `batch_prefill_with_paged_kv_cache` and `batch_decode_with_paged_kv_cache`
//! over FlashInfer's NHD page layout (see `crate::kv` and `ingot_cpu::attention`).
//!
//! Both kernels are flash-style: keys and values are streamed through shared memory one
//! tile at a time and each query row keeps an online softmax (running max m, running sum
//! l, unnormalized output), so no score matrix beyond one tile ever exists. A cube serves
//! one KV head and a group of the query heads that read it (GQA), so a K/V tile is loaded
//! once for the whole group. Scores are f32: s = (sm_scale·q)·k, then cap·tanh(s / cap)
//! when `logits_soft_cap` > 0; masked keys (outside the sequence, the causal limit or the
//! window) get weight 0. The output is rounded once to the dtype; lse = m + ln l (natural
//! log), and a row that sees no key gets output 0 and lse −Inf, as the reference.
//!
//! Reductions run through plane shuffles (`plane_shuffle_xor` over aligned groups of
//! lanes) when [`Device::plane_dim`] allows, and through shared memory otherwise; the
//! choice is a comptime flag made at launch, and both paths give the same sums up to the
//! order of f32 additions.
//!
//! Decode (one query per sequence): a cube handles one (sequence, KV head, head chunk,
//! split) with `nt` threads (the head size rounded up to a power of two, 64..=256). Per
//! tile of `tk` keys: `nt/tk` lanes per key compute partial dot products for every head of
//! the chunk (each lane holds its query columns in registers) and reduce them; one thread
//! per (head, key) updates the running max and writes the weights; one thread per output
//! column accumulates weights·V for every head, reading each V value once. (Shared-memory
//! rows hold the head dimension in the permuted order of [`column`], so that stores of
//! vector loads do not conflict.)
//! Long contexts are split: the visible keys of a sequence are cut into `splits` chunks,
//! each cube writes its partial (m, l, unnormalized output) and a merge kernel combines
//! them per (sequence, head). The split count is chosen at run time ([`decode_splits`]).
//!
//! Prefill: a cube handles `bq` query rows (tokens × heads of one KV head's group) and
//! walks `bk`-key tiles; each thread owns `rm` rows: `rm × rn` scores and `rm × rd`
//! output columns, kept in registers. Rows are consecutive tokens of the flattened query
//! array; a tile that straddles sequences processes each sequence's rows in turn (the
//! other rows are masked), so no host-side plan is needed and the launch never reads
//! `qo_indptr` back. Tiles are chosen from the head size and the device's shared memory.
//!
//! Index tensors are checked on the host by [`ingot_core::Backend::run`]
//! (`kv::check_page_table` and friends). On the device path the kernels clamp every index
//! they read (indptr values to the index array, last-page lengths to 1..=page_size), read
//! no page id outside kv_indices and skip (read as zeros) page ids outside 0..num_pages,
//! so arbitrary values give wrong numbers but never out-of-bounds accesses.

use crate::device::{cube_index, grid_1d, grid_cubes, input, linear_pos, with_float, Device, GpuTensor, GpuTensors};
use crate::kv::{check_indexable, check_page_table, clamp_index};
use cubecl::prelude::*;
use ingot_core::{ensure, DType, DecodeParams, PrefillParams, Result, Tensors};

/// Which reduction path a launch takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduce {
    /// Planes when [`Device::plane_dim`] is `Some`, shared memory otherwise.
    #[default]
    Device,
    /// Shared memory only.
    SharedMemory,
    /// Planes of this width, whatever the device reports: only for a device known to run
    /// planes of exactly that width (tests use it to run the plane path where the adapter
    /// does not advertise plane operations).
    PlaneWidth(u32),
}

/// Launch choices that are normally made from the device and the shape; tests and
/// benchmarks override them.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnTuning {
    /// Decode: KV splits per sequence (`None`: [`decode_splits`]).
    pub splits: Option<usize>,
    /// The reduction path.
    pub reduce: Reduce,
}

impl Reduce {
    fn width<R: Runtime>(self, d: &Device<R>) -> Option<u32> {
        match self {
            Reduce::Device => d.plane_dim(),
            Reduce::SharedMemory => None,
            Reduce::PlaneWidth(w) => Some(w),
        }
    }
}

// ---------------------------------------------------------------- shared device code

/// The lowest finite f32: the identity of the running max and the score of a masked key.
/// (An infinite constant does not survive CubeCL's WGSL output, and a reinterpreted one
/// does not compile under NVRTC.)
#[cube]
fn lowest() -> f32 {
    f32::new(-3.402_823_5e38)
}

/// Sequence `b`'s first and one-past-last index into kv_indices, and its length, with
/// every value clamped so that positions below the length map to page indices below the
/// end (see the module doc).
#[cube]
fn seq_range(kv_indptr: &Array<i32>, kv_last: &Array<i32>, b: usize, num_page_ids: usize, ps: usize, out: &mut Array<usize>) {
    let start = clamp_index(kv_indptr[b], num_page_ids);
    let end = clamp_index(kv_indptr[b + 1], num_page_ids).max(start);
    let last = clamp_index(kv_last[b], ps).max(1);
    let mut len = 0usize;
    if end > start {
        len = (end - start - 1) * ps + last;
    }
    out[0] = start;
    out[1] = end;
    out[2] = len;
}

/// cap·tanh(s / cap) when cap > 0, else s. tanh rounds to ±1 in f32 beyond |y| = 9; the
/// guard keeps large |y| away from an Inf/Inf inside tanh.
#[cube]
fn soft_cap(s: f32, cap: f32) -> f32 {
    let mut r = s;
    if cap > 0.0 {
        let y = s / cap;
        let sign = select(y > 0.0, 1.0f32, -1.0f32);
        r = cap * select(y.abs() > 9.0, sign, y.tanh());
    }
    r
}

/// The head-dimension column held at position `p` of a shared-memory row. Rows are read
/// from global memory in vectors of `nv` elements, one vector per thread; storing them as
/// they come would put consecutive threads `nv` floats apart (an `nv`-way bank conflict on
/// every store), so element e of vector v is stored at position e·(d/nv) + v instead.
/// Queries, keys and values use the same layout, so dot products run over positions;
/// only the output columns need this map.
#[cube]
fn column(p: usize, #[comptime] d: usize, #[comptime] nv: usize) -> usize {
    let vpr = comptime!(d / nv);
    (p % vpr) * nv + p / vpr
}

/// Load keys j0..j0+tk of one KV head into shared memory as f32, in the layout of
/// [`column`]: K rows at stride `k_stride`, V rows at stride `v_stride`; keys at or past
/// `j_end`, and keys whose page id is out of range, read as zeros. Rows are read in vectors
/// of N elements.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_kv_tile<F: Float, N: Size>(
    k_cache: &Array<Vector<F, N>>,
    v_cache: &Array<Vector<F, N>>,
    kv_indices: &Array<i32>,
    smem_k: &mut SharedMemory<f32>,
    smem_v: &mut SharedMemory<f32>,
    page_start: usize,
    page_end: usize,
    j0: usize,
    j_end: usize,
    kvh: usize,
    hk: usize,
    ps: usize,
    num_pages: usize,
    #[comptime] d: usize,
    #[comptime] tk: usize,
    #[comptime] k_stride: usize,
    #[comptime] v_stride: usize,
    #[comptime] nt: usize,
) {
    let nv = N::value();
    let vpr = comptime!(d / nv);
    let total = comptime!(tk * vpr);
    let mut idx = UNIT_POS_X as usize;
    while idx < total {
        let kk = idx / vpr;
        let cv = idx % vpr;
        let j = j0 + kk;
        let mut ok = false;
        let mut at = 0usize;
        if j < j_end {
            let pi = page_start + j / ps;
            if pi < page_end {
                let page = kv_indices[pi];
                if page >= 0 && usize::cast_from(page) < num_pages {
                    ok = true;
                    at = ((usize::cast_from(page) * ps + j % ps) * hk + kvh) * vpr + cv;
                }
            }
        }
        // Element e of vector cv (column cv·nv + e) goes to position e·vpr + cv: see `column`.
        let kb = kk * k_stride + cv;
        let vb = kk * v_stride + cv;
        if ok {
            let kv = k_cache[at];
            let vv = v_cache[at];
            #[unroll]
            for e in 0..nv {
                smem_k[kb + e * vpr] = f32::cast_from(kv[e]);
                smem_v[vb + e * vpr] = f32::cast_from(vv[e]);
            }
        } else {
            #[unroll]
            for e in 0..nv {
                smem_k[kb + e * vpr] = 0.0;
                smem_v[vb + e * vpr] = 0.0;
            }
        }
        idx += nt;
    }
}

/// Sum `v` over aligned groups of `lanes` consecutive lanes of a plane (butterfly); every
/// lane of a group gets the group's sum. All lanes of the plane must call it.
#[cube]
fn group_sum(v: f32, #[comptime] lanes: usize) -> f32 {
    let mut s = v;
    let steps = comptime!(lanes.trailing_zeros() as usize);
    #[unroll]
    for i in 0..steps {
        s += plane_shuffle_xor(s, comptime!((lanes >> (i + 1)) as u32));
    }
    s
}

/// The maximum of `v` over aligned groups of `lanes` consecutive lanes (butterfly).
#[cube]
fn group_max(v: f32, #[comptime] lanes: usize) -> f32 {
    let mut s = v;
    let steps = comptime!(lanes.trailing_zeros() as usize);
    #[unroll]
    for i in 0..steps {
        s = s.max(plane_shuffle_xor(s, comptime!((lanes >> (i + 1)) as u32)));
    }
    s
}

// ---------------------------------------------------------------- decode

/// Decode attention for one (sequence, KV head, head chunk, split); see the module doc.
/// `direct`: one split, write the normalized output and lse; otherwise write the partial
/// (unnormalized output, m, l) of this split for [`merge_kernel`].
#[cube(launch_unchecked)]
// (Ceiling divisions are spelled out in the cube code.)
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
fn decode_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k_cache: &Array<Vector<F, N>>,
    v_cache: &Array<Vector<F, N>>,
    kv_indices: &Array<i32>,
    kv_indptr: &Array<i32>,
    kv_last: &Array<i32>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    part_o: &mut Array<f32>,
    part_ml: &mut Array<f32>,
    batch: usize,
    hq: usize,
    hk: usize,
    ps: usize,
    num_pages: usize,
    num_page_ids: usize,
    splits: usize,
    has_window: u32,
    window: usize,
    sm_scale: f32,
    cap: f32,
    neg_inf: f32,
    #[comptime] d: usize,
    #[comptime] gc: usize,
    #[comptime] tk: usize,
    #[comptime] nt: usize,
    #[comptime] plane: bool,
    #[comptime] direct: bool,
) {
    let lanes = comptime!(nt / tk);
    let k_stride = comptime!(d + lanes);
    let nv = N::value();
    let vpr = comptime!(d / nv);
    let cpt = comptime!(d.div_ceil(nt));
    let dpl = comptime!(d.div_ceil(lanes));
    let t = UNIT_POS_X as usize;
    let g = hq / hk;
    let n_hc = (g + gc - 1) / gc;
    let cube = cube_index();
    if cube < batch * hk * n_hc * splits {
        let split = cube % splits;
        let rest = cube / splits;
        let hc = rest % n_hc;
        let rest = rest / n_hc;
        let kvh = rest % hk;
        let b = rest / hk;
        let h0 = kvh * g + hc * gc;
        let nh = min(gc, g - hc * gc);

        let mut sr = Array::<usize>::new(3usize);
        seq_range(kv_indptr, kv_last, b, num_page_ids, ps, &mut sr);
        let page_start = sr[0];
        let page_end = sr[1];
        let kv_len = sr[2];
        // The query sits at kv_len − 1 and sees keys lo..kv_len.
        let mut lo = 0usize;
        if has_window == 1 && kv_len > window + 1 {
            lo = kv_len - 1 - window;
        }
        let per = (kv_len - lo + splits - 1) / splits;
        let chunk = (per + tk - 1) / tk * tk;
        let j_begin = lo + split * chunk;
        let j_end = min(kv_len, j_begin + chunk);

        let mut smem_q = SharedMemory::<f32>::new(comptime!(gc * d));
        let mut smem_k = SharedMemory::<f32>::new(comptime!(tk * k_stride));
        let mut smem_v = SharedMemory::<f32>::new(comptime!(tk * d));
        let mut smem_s = SharedMemory::<f32>::new(comptime!(gc * tk));
        let mut smem_p = SharedMemory::<f32>::new(comptime!(gc * tk));
        let mut smem_alpha = SharedMemory::<f32>::new(gc);
        let mut smem_m = SharedMemory::<f32>::new(gc);
        let mut smem_part = SharedMemory::<f32>::new(comptime!(if plane { 1usize } else { gc * nt }));

        // Stage the chunk's query heads, scaled by sm_scale.
        let mut idx = t;
        while idx < comptime!(gc * vpr) {
            let h = idx / vpr;
            let cv = idx % vpr;
            let base = h * d + cv;
            if h < nh {
                let v = q[(b * hq + h0 + h) * vpr + cv];
                #[unroll]
                for e in 0..nv {
                    smem_q[base + e * vpr] = f32::cast_from(v[e]) * sm_scale;
                }
            } else {
                #[unroll]
                for e in 0..nv {
                    smem_q[base + e * vpr] = 0.0;
                }
            }
            idx += nt;
        }
        if t < gc {
            smem_m[t] = lowest();
        }
        // Per pair thread (head t / tk, key t % tk): the running max of its head.
        let mut m_run = lowest();
        // Per position thread: unnormalized output and weight sum, [position][head].
        let mut acc = Array::<f32>::new(comptime!(cpt * gc));
        let mut lsum = Array::<f32>::new(comptime!(cpt * gc));
        #[unroll]
        for i in 0..comptime!(cpt * gc) {
            acc[i] = 0.0;
            lsum[i] = 0.0;
        }
        sync_cube();

        let kk = t / lanes;
        let lane = t % lanes;
        // The thread's query positions (lane, lane + lanes, ...) of every head, in registers.
        let mut qreg = Array::<f32>::new(comptime!(gc * dpl));
        #[unroll]
        for h in 0..gc {
            #[unroll]
            for i in 0..dpl {
                let c = lane + i * lanes;
                qreg[h * dpl + i] = select(c < d, smem_q[h * d + min(c, comptime!(d - 1))], 0.0);
            }
        }
        let pair = t < comptime!(gc * tk);
        let ph = t / tk;
        let pk = t % tk;
        let mut j0 = j_begin;
        while j0 < j_end {
            load_kv_tile::<F, N>(
                k_cache,
                v_cache,
                kv_indices,
                &mut smem_k,
                &mut smem_v,
                page_start,
                page_end,
                j0,
                j_end,
                kvh,
                hk,
                ps,
                num_pages,
                d,
                tk,
                k_stride,
                d,
                nt,
            );
            sync_cube();

            // Partial dot products of key kk over positions lane, lane + lanes, ...
            let mut part = Array::<f32>::new(gc);
            #[unroll]
            for h in 0..gc {
                part[h] = 0.0;
            }
            let kb = kk * k_stride;
            #[unroll]
            for i in 0..dpl {
                let c = lane + i * lanes;
                if c < d {
                    let kval = smem_k[kb + c];
                    #[unroll]
                    for h in 0..gc {
                        part[h] += qreg[h * dpl + i] * kval;
                    }
                }
            }
            if plane {
                #[unroll]
                for h in 0..gc {
                    part[h] = group_sum(part[h], lanes);
                }
                if lane == 0 {
                    let valid = j0 + kk < j_end;
                    #[unroll]
                    for h in 0..gc {
                        smem_s[h * tk + kk] = select(valid && h < nh, soft_cap(part[h], cap), lowest());
                    }
                }
                sync_cube();
            } else {
                #[unroll]
                for h in 0..gc {
                    smem_part[(h * tk + kk) * lanes + lane] = part[h];
                }
                sync_cube();
                if pair {
                    let mut s = 0.0f32;
                    #[unroll]
                    for l in 0..lanes {
                        s += smem_part[t * lanes + l];
                    }
                    smem_s[t] = select(j0 + pk < j_end && ph < nh, soft_cap(s, cap), lowest());
                }
                sync_cube();
            }

            // Online softmax, one thread per (head, key).
            let valid = pair && ph < nh && j0 + pk < j_end;
            let sv = smem_s[select(pair, t, 0usize)];
            let mut mx = sv;
            if plane {
                mx = group_max(sv, tk);
            } else if pair {
                #[unroll]
                for k2 in 0..tk {
                    mx = mx.max(smem_s[ph * tk + k2]);
                }
            }
            if pair {
                let m_new = m_run.max(mx);
                smem_p[t] = select(valid, (sv - m_new).exp(), 0.0);
                if pk == 0 {
                    smem_alpha[ph] = (m_run - m_new).exp();
                    smem_m[ph] = m_new;
                }
                m_run = m_new;
            }
            sync_cube();

            // Weights · V, one thread per position (column `column(position)`), every head
            // of the chunk.
            #[unroll]
            for ci in 0..cpt {
                let c = t + ci * nt;
                if c < d {
                    #[unroll]
                    for h in 0..gc {
                        let a = smem_alpha[h];
                        acc[ci * gc + h] *= a;
                        lsum[ci * gc + h] *= a;
                    }
                    for k2 in 0..tk {
                        let vv = smem_v[k2 * d + c];
                        #[unroll]
                        for h in 0..gc {
                            let p = smem_p[h * tk + k2];
                            acc[ci * gc + h] += p * vv;
                            lsum[ci * gc + h] += p;
                        }
                    }
                }
            }
            sync_cube();
            j0 += tk;
        }

        #[unroll]
        for ci in 0..cpt {
            let pos = t + ci * nt;
            if pos < d {
                let c = column(pos, d, nv);
                #[unroll]
                for h in 0..gc {
                    if h < nh {
                        let o = acc[ci * gc + h];
                        let l = lsum[ci * gc + h];
                        let row = b * hq + h0 + h;
                        if direct {
                            out[row * d + c] = F::cast_from(select(l > 0.0, o / l, 0.0));
                            if c == 0 {
                                lse[row] = select(l > 0.0, smem_m[h] + l.ln(), neg_inf);
                            }
                        } else {
                            part_o[(row * splits + split) * d + c] = o;
                            if c == 0 {
                                part_ml[(row * splits + split) * 2] = smem_m[h];
                                part_ml[(row * splits + split) * 2 + 1] = l;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Combine the splits of every (sequence, head) row: thread per (row, column).
#[cube(launch_unchecked)]
fn merge_kernel<F: Float>(
    part_o: &Array<f32>,
    part_ml: &Array<f32>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    rows: usize,
    splits: usize,
    neg_inf: f32,
    #[comptime] d: usize,
) {
    let i = linear_pos();
    if i < rows * d {
        let row = i / d;
        let c = i % d;
        let base = row * splits;
        let mut m = lowest();
        for s in 0..splits {
            let ms = part_ml[(base + s) * 2];
            let ls = part_ml[(base + s) * 2 + 1];
            m = select(ls > 0.0, m.max(ms), m);
        }
        let mut l = 0.0f32;
        let mut o = 0.0f32;
        for s in 0..splits {
            let ls = part_ml[(base + s) * 2 + 1];
            let w = select(ls > 0.0, (part_ml[(base + s) * 2] - m).exp(), 0.0);
            l += w * ls;
            o += w * part_o[(base + s) * d + c];
        }
        out[i] = F::cast_from(select(l > 0.0, o / l, 0.0));
        if c == 0 {
            lse[row] = select(l > 0.0, m + l.ln(), neg_inf);
        }
    }
}

/// Decode launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeTiles {
    /// Threads per cube.
    pub nt: usize,
    /// Query heads per cube.
    pub gc: usize,
    /// Keys per tile.
    pub tk: usize,
    /// Whether the plane path runs.
    pub plane: bool,
}

/// Shared memory, in bytes, of a decode launch.
fn decode_smem(d: usize, t: &DecodeTiles) -> usize {
    let lanes = t.nt / t.tk;
    let part = if t.plane { 1 } else { t.gc * t.nt };
    4 * (t.gc * d + t.tk * (d + lanes) + t.tk * d + 2 * t.gc * t.tk + 2 * t.gc + part)
}

/// Choose the decode tiles for head size `d`, `g` query heads per KV head, a shared memory
/// budget and the plane width: the largest key tile that fits, with every (head, key) pair
/// of a tile owned by one thread and at most 64 query values held per thread (each thread
/// keeps the positions it multiplies of every head of the chunk in registers). With planes,
/// the largest tile whose two reductions (over the lanes of a key, over the keys of a tile)
/// each fit in one plane is preferred; the shared-memory path takes over when none fits.
pub fn decode_tiles(d: usize, g: usize, smem_budget: usize, plane: Option<u32>) -> DecodeTiles {
    let nt = d.next_power_of_two().clamp(64, 256);
    let gc = g.clamp(1, 8);
    let max_tk = nt / gc.next_power_of_two();
    for want_plane in [true, false] {
        if want_plane && plane.is_none() {
            continue;
        }
        for tk in [64, 32, 16, 8, 4, 2, 1] {
            let fits_plane = plane.is_some_and(|w| nt / tk <= w as usize && tk <= w as usize);
            let q_regs = gc * d.div_ceil(nt / tk);
            if tk > max_tk || q_regs > 64 || (want_plane && !fits_plane) {
                continue;
            }
            let t = DecodeTiles { nt, gc, tk, plane: want_plane };
            if decode_smem(d, &t) <= smem_budget {
                return t;
            }
        }
    }
    DecodeTiles { nt, gc, tk: 1, plane: false }
}

/// Keys a split should at least cover: below this, the partial outputs and the merge cost
/// more than the parallelism they buy (at 256 keys the partials add under 2% to the bytes
/// a split reads for head size 128).
const MIN_SPLIT_KEYS: usize = 256;
/// The most splits per sequence.
const MAX_SPLITS: usize = 256;
/// Cubes per multiprocessor a decode launch aims for: decode is bound by memory, and
/// several cubes per multiprocessor keep enough loads in flight.
const CUBES_PER_SM: usize = 8;

/// The split count of a decode launch: enough cubes for [`CUBES_PER_SM`] per multiprocessor
/// (`sms`; the batch, KV heads and head chunks already give `units` of them), but no split
/// shorter than [`MIN_SPLIT_KEYS`] keys of the estimated context. The context is estimated
/// without reading the page table back: `num_page_ids · page_size / batch_size` bounds the
/// mean sequence length from above, and a window caps it at `window_left + 1`.
pub fn decode_splits(p: &DecodeParams, units: usize, sms: usize) -> usize {
    let mut ctx = (p.num_page_ids * p.page_size).div_ceil(p.batch_size.max(1));
    if p.window_left >= 0 {
        ctx = ctx.min(p.window_left as usize + 1);
    }
    let want = (CUBES_PER_SM * sms).div_ceil(units.max(1));
    let most = ctx.div_ceil(MIN_SPLIT_KEYS).clamp(1, MAX_SPLITS);
    want.clamp(1, most)
}

/// Elements per vector load: 16 bytes where the device and the head size allow.
fn vector_width<R: Runtime>(d: &Device<R>, dtype: DType, head: usize) -> usize {
    let max = d.client.properties().hardware.max_vector_size.max(1);
    let mut n = (16 / dtype.type_size().max(1)).min(max).max(1);
    while !head.is_multiple_of(n) {
        n /= 2;
    }
    n
}

/// Shared memory a cube may use: the device's limit, capped so that a few cubes share a
/// multiprocessor.
fn smem_budget<R: Runtime>(d: &Device<R>, cap: usize) -> usize {
    d.client.properties().hardware.max_shared_memory_size.min(cap)
}

/// The window as the kernels take it: (has_window, window) with the window clamped to
/// positions the kernels can hold.
fn window_arg(window_left: i64) -> (u32, usize) {
    if window_left < 0 {
        (0, 0)
    } else {
        (1, window_left.min(1 << 30) as usize)
    }
}

/// `batch_decode_with_paged_kv_cache` with the default launch choices.
pub fn batch_decode<R: Runtime>(d: &Device<R>, p: &DecodeParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    batch_decode_tuned(d, p, inputs, AttnTuning::default())
}

/// `batch_decode_with_paged_kv_cache` with explicit launch choices.
pub fn batch_decode_tuned<R: Runtime>(d: &Device<R>, p: &DecodeParams, inputs: &GpuTensors, tuning: AttnTuning) -> Result<GpuTensors> {
    const OP: &str = "batch_decode_with_paged_kv_cache";
    let (batch, hq, hk, dh) = (p.batch_size, p.num_qo_heads, p.num_kv_heads, p.head_size);
    let cache_n = p.num_pages * p.page_size * hk * dh;
    check_indexable(OP, "the cache", cache_n)?;
    let q = input(OP, inputs, "q")?;
    let kc = input(OP, inputs, "k_cache")?;
    let vc = input(OP, inputs, "v_cache")?;
    let idx = input(OP, inputs, "kv_indices")?.handle.clone();
    let ptr = input(OP, inputs, "kv_indptr")?.handle.clone();
    let last = input(OP, inputs, "kv_last_page_len")?.handle.clone();

    let g = hq / hk;
    let budget = smem_budget(d, 48 * 1024);
    let tiles = decode_tiles(dh, g, budget, tuning.reduce.width(d));
    ensure!(
        decode_smem(dh, &tiles) <= budget,
        OP,
        "head_size {dh} needs {} bytes of shared memory, more than the device's {budget}",
        decode_smem(dh, &tiles)
    );
    let n_hc = g.div_ceil(tiles.gc);
    let units = batch * hk * n_hc;
    let sms = d.client.properties().hardware.num_streaming_multiprocessors.unwrap_or(16) as usize;
    let splits = tuning.splits.unwrap_or_else(|| decode_splits(p, units, sms)).max(1);
    let rows = batch * hq;
    check_indexable(OP, "the split partials", rows * splits * dh)?;
    let direct = splits == 1;
    let out = d.alloc(p.dtype, rows * dh);
    let lse = d.alloc(DType::F32, rows);
    let (po_n, pml_n) = if direct { (1, 1) } else { (rows * splits * dh, rows * splits * 2) };
    let part_o = d.alloc(DType::F32, po_n);
    let part_ml = d.alloc(DType::F32, pml_n);
    let nv = vector_width(d, p.dtype, dh);
    let (has_window, window) = window_arg(p.window_left);
    let (count, dim) = grid_cubes(units * splits, tiles.nt as u32);
    with_float!(p.dtype, F => {
        // SAFETY: q holds batch·hq·dh elements (batch·hq·dh/nv vectors; nv divides dh) and is
        // read at rows (b·hq + h0 + h) with h < nh, so h0 + h < hq. The caches hold
        // cache_n elements; a vector is read only for a page id in 0..num_pages, slot
        // j % ps < ps, KV head kvh < hk and vector cv < dh/nv. kv_indptr/kv_last_page_len
        // are read at b < batch (+1), kv_indices below the clamped kv_indptr[b+1] <=
        // num_page_ids. Outputs: row·dh + c < rows·dh and row < rows; the partials at
        // (row·splits + split)·dh + c < rows·splits·dh and twice that of rows·splits for
        // (m, l); in the direct case the 1-element partials are never touched. Shared
        // memory indices stay below the comptime sizes (kk < tk, lane < nt/tk, c < dh,
        // h < gc, t < gc·tk for pair writes).
        unsafe {
            decode_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                nv,
                ArrayArg::from_raw_parts(q.handle.clone(), q.numel() / nv),
                ArrayArg::from_raw_parts(kc.handle.clone(), cache_n / nv),
                ArrayArg::from_raw_parts(vc.handle.clone(), cache_n / nv),
                ArrayArg::from_raw_parts(idx, p.num_page_ids),
                ArrayArg::from_raw_parts(ptr, batch + 1),
                ArrayArg::from_raw_parts(last, batch),
                ArrayArg::from_raw_parts(out.clone(), rows * dh),
                ArrayArg::from_raw_parts(lse.clone(), rows),
                ArrayArg::from_raw_parts(part_o.clone(), po_n),
                ArrayArg::from_raw_parts(part_ml.clone(), pml_n),
                batch,
                hq,
                hk,
                p.page_size,
                p.num_pages,
                p.num_page_ids,
                splits,
                has_window,
                window,
                p.sm_scale as f32,
                p.logits_soft_cap as f32,
                f32::NEG_INFINITY,
                dh,
                tiles.gc,
                tiles.tk,
                tiles.nt,
                tiles.plane,
                direct,
            )
        }
        if !direct {
            let (count, dim) = grid_1d(rows * dh);
            // SAFETY: the partials hold rows·splits·dh and rows·splits·2 f32 (every one
            // written by the decode launch: each (row, split) cube writes its row's columns
            // and (m, l), empty splits with l = 0); thread i < rows·dh writes out[i] and
            // lse[i / dh].
            unsafe {
                merge_kernel::launch_unchecked::<F, R>(
                    &d.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(part_o, po_n),
                    ArrayArg::from_raw_parts(part_ml, pml_n),
                    ArrayArg::from_raw_parts(out.clone(), rows * dh),
                    ArrayArg::from_raw_parts(lse.clone(), rows),
                    rows,
                    splits,
                    f32::NEG_INFINITY,
                    dh,
                )
            }
        }
    });
    Ok(GpuTensors::from([
        ("output".to_string(), GpuTensor::new(out, p.dtype, &[batch, hq, dh])),
        ("lse".to_string(), GpuTensor::new(lse, DType::F32, &[batch, hq])),
    ]))
}

// ---------------------------------------------------------------- prefill

/// Host checks of a prefill: the page table, and `qo_indptr` (0 first, non-decreasing,
/// within and ending at num_tokens, at most kv_len queries per sequence when causal), with
/// the CPU reference's messages.
pub(crate) fn check_prefill(p: &PrefillParams, inputs: &Tensors) -> Result<()> {
    const OP: &str = "batch_prefill_with_paged_kv_cache";
    let seqs = check_page_table(OP, inputs, p.batch_size, p.page_size, p.num_pages)?;
    let qo = inputs["qo_indptr"].to_i32()?;
    ensure!(qo[0] == 0, OP, "qo_indptr[0] = {} must be 0", qo[0]);
    for (b, seq) in seqs.iter().enumerate() {
        let (start, end) = (qo[b], qo[b + 1]);
        ensure!(end >= start, OP, "qo_indptr decreases: qo_indptr[{}] = {end} < qo_indptr[{b}] = {start}", b + 1);
        ensure!(end as usize <= p.num_tokens, OP, "qo_indptr[{}] = {end} exceeds num_tokens {}", b + 1, p.num_tokens);
        let qo_len = (end - start) as usize;
        ensure!(!p.causal || qo_len <= seq.kv_len, OP, "causal sequence {b} has {qo_len} queries but only {} keys", seq.kv_len);
    }
    let last = qo[p.batch_size];
    ensure!(last as usize == p.num_tokens, OP, "qo_indptr[{}] = {last} must equal num_tokens {}", p.batch_size, p.num_tokens);
    Ok(())
}

/// Prefill attention for one (query tile, KV head, head chunk); see the module doc.
#[cube(launch_unchecked)]
// (Ceiling divisions are spelled out in the cube code.)
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
fn prefill_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k_cache: &Array<Vector<F, N>>,
    v_cache: &Array<Vector<F, N>>,
    kv_indices: &Array<i32>,
    kv_indptr: &Array<i32>,
    kv_last: &Array<i32>,
    qo_indptr: &Array<i32>,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    num_tokens: usize,
    batch: usize,
    hq: usize,
    hk: usize,
    ps: usize,
    num_pages: usize,
    num_page_ids: usize,
    causal: u32,
    has_window: u32,
    window: usize,
    sm_scale: f32,
    cap: f32,
    neg_inf: f32,
    #[comptime] d: usize,
    #[comptime] bq: usize,
    #[comptime] bk: usize,
    #[comptime] tr: usize,
    #[comptime] tc: usize,
    #[comptime] gc: usize,
    #[comptime] plane: bool,
) {
    let nt = comptime!(tr * tc);
    let rm = comptime!(bq / tr);
    let rn = comptime!(bk / tc);
    let rd = comptime!(d.div_ceil(tc));
    let bt = comptime!(bq / gc);
    let qs = comptime!(d + 1);
    let vs = comptime!(rd * tc);
    let pstr = comptime!(bk + 1);
    let nv = N::value();
    let vpr = comptime!(d / nv);

    let t = UNIT_POS_X as usize;
    let rg = t / tc;
    let kg = t % tc;
    let g = hq / hk;
    let n_hc = (g + gc - 1) / gc;
    let n_tiles = (num_tokens + bt - 1) / bt;
    let cube = cube_index();
    if cube < n_tiles * hk * n_hc {
        // Longest tiles (the last tokens, under a causal mask) first.
        let tile = n_tiles - 1 - cube % n_tiles;
        let rest = cube / n_tiles;
        let hc = rest % n_hc;
        let kvh = rest / n_hc;
        let h0 = kvh * g + hc * gc;
        let nh = min(gc, g - hc * gc);
        let t0 = tile * bt;
        let t1 = min(num_tokens, t0 + bt);

        let mut smem_q = SharedMemory::<f32>::new(comptime!(bq * qs));
        let mut smem_k = SharedMemory::<f32>::new(comptime!(bk * qs));
        let mut smem_v = SharedMemory::<f32>::new(comptime!(bk * vs));
        let mut smem_p = SharedMemory::<f32>::new(comptime!(bq * pstr));
        let mut smem_red = SharedMemory::<f32>::new(comptime!(if plane { 1usize } else { bq * tc }));

        // The sequence holding token t0: the last b with qo_indptr[b] <= t0.
        let mut blo = 0usize;
        let mut bhi = batch;
        while bhi - blo > 1 {
            let mid = (blo + bhi) / 2;
            if clamp_index(qo_indptr[mid], num_tokens) <= t0 {
                blo = mid;
            } else {
                bhi = mid;
            }
        }

        let mut sr = Array::<usize>::new(3usize);
        let mut rlo = Array::<usize>::new(rm);
        let mut rhi = Array::<usize>::new(rm);
        let mut m = Array::<f32>::new(rm);
        let mut l = Array::<f32>::new(rm);
        let mut o = Array::<f32>::new(comptime!(rm * rd));
        let mut s = Array::<f32>::new(comptime!(rm * rn));

        let mut b = blo;
        while b < batch && clamp_index(qo_indptr[b], num_tokens) < t1 {
            let ss = clamp_index(qo_indptr[b], num_tokens);
            let se = clamp_index(qo_indptr[b + 1], num_tokens).max(ss);
            let a0 = t0.max(ss);
            let a1 = t1.min(se);
            if a0 < a1 {
                let qo_len = se - ss;
                seq_range(kv_indptr, kv_last, b, num_page_ids, ps, &mut sr);
                let page_start = sr[0];
                let page_end = sr[1];
                let kv_len = sr[2];
                // With x = kv_len + (token − ss) = position + qo_len: the visible keys of a
                // row are max(0, x − qo_len − window) .. (causal ? min(kv_len, x + 1 − qo_len) : kv_len).
                let wsub = qo_len + window;
                let x_first = kv_len + (a0 - ss);
                let x_last = kv_len + (a1 - 1 - ss);
                let mut klo = 0usize;
                if has_window == 1 && x_first > wsub {
                    klo = x_first - wsub;
                }
                let mut khi = kv_len;
                if causal == 1 {
                    khi = select(x_last + 1 > qo_len, min(kv_len, x_last + 1 - qo_len), 0usize);
                }
                #[unroll]
                for i in 0..rm {
                    let r = rg * rm + i;
                    let tok = t0 + r / gc;
                    let ok = r / gc < bt && r % gc < nh && tok >= a0 && tok < a1;
                    let x = kv_len + (tok.max(ss) - ss);
                    let mut hi = kv_len;
                    if causal == 1 {
                        hi = select(x + 1 > qo_len, min(kv_len, x + 1 - qo_len), 0usize);
                    }
                    let mut lo = 0usize;
                    if has_window == 1 && x > wsub {
                        lo = x - wsub;
                    }
                    rlo[i] = select(ok, lo, 0usize);
                    rhi[i] = select(ok, hi, 0usize);
                    m[i] = lowest();
                    l[i] = 0.0;
                }
                #[unroll]
                for i in 0..comptime!(rm * rd) {
                    o[i] = 0.0;
                }

                // Stage the rows' queries (scaled), zeros for rows outside this sequence.
                let mut idx = t;
                while idx < comptime!(bq * vpr) {
                    let r = idx / vpr;
                    let cv = idx % vpr;
                    let tok = t0 + r / gc;
                    let ok = r / gc < bt && r % gc < nh && tok >= a0 && tok < a1;
                    let base = r * qs + cv;
                    if ok {
                        let v = q[(tok * hq + h0 + r % gc) * vpr + cv];
                        #[unroll]
                        for e in 0..nv {
                            smem_q[base + e * vpr] = f32::cast_from(v[e]) * sm_scale;
                        }
                    } else {
                        #[unroll]
                        for e in 0..nv {
                            smem_q[base + e * vpr] = 0.0;
                        }
                    }
                    idx += nt;
                }
                sync_cube();

                let mut j0 = klo;
                while j0 < khi {
                    load_kv_tile::<F, N>(
                        k_cache,
                        v_cache,
                        kv_indices,
                        &mut smem_k,
                        &mut smem_v,
                        page_start,
                        page_end,
                        j0,
                        khi,
                        kvh,
                        hk,
                        ps,
                        num_pages,
                        d,
                        bk,
                        qs,
                        vs,
                        nt,
                    );
                    sync_cube();

                    // Scores of rows rg·rm + i against keys kg + tc·jn.
                    #[unroll]
                    for i in 0..comptime!(rm * rn) {
                        s[i] = 0.0;
                    }
                    for c in 0..d {
                        let mut qv = Array::<f32>::new(rm);
                        #[unroll]
                        for i in 0..rm {
                            qv[i] = smem_q[(rg * rm + i) * qs + c];
                        }
                        #[unroll]
                        for jn in 0..rn {
                            let kv = smem_k[(kg + jn * tc) * qs + c];
                            #[unroll]
                            for i in 0..rm {
                                s[i * rn + jn] += qv[i] * kv;
                            }
                        }
                    }

                    // Cap, mask, and the row maxima over the tile.
                    let mut mx = Array::<f32>::new(rm);
                    #[unroll]
                    for i in 0..rm {
                        let mut rmax = lowest();
                        #[unroll]
                        for jn in 0..rn {
                            let j = j0 + kg + jn * tc;
                            let valid = j < khi && j >= rlo[i] && j < rhi[i];
                            let v = select(valid, soft_cap(s[i * rn + jn], cap), lowest());
                            s[i * rn + jn] = v;
                            rmax = rmax.max(v);
                        }
                        mx[i] = rmax;
                    }
                    if plane {
                        #[unroll]
                        for i in 0..rm {
                            mx[i] = group_max(mx[i], tc);
                        }
                    } else {
                        #[unroll]
                        for i in 0..rm {
                            smem_red[(rg * rm + i) * tc + kg] = mx[i];
                        }
                        sync_cube();
                        #[unroll]
                        for i in 0..rm {
                            let mut v = lowest();
                            #[unroll]
                            for k2 in 0..tc {
                                v = v.max(smem_red[(rg * rm + i) * tc + k2]);
                            }
                            mx[i] = v;
                        }
                    }

                    // New maxima, rescale, weights to shared memory.
                    #[unroll]
                    for i in 0..rm {
                        let m_new = m[i].max(mx[i]);
                        let alpha = (m[i] - m_new).exp();
                        m[i] = m_new;
                        l[i] *= alpha;
                        #[unroll]
                        for jd in 0..rd {
                            o[i * rd + jd] *= alpha;
                        }
                        #[unroll]
                        for jn in 0..rn {
                            let j = j0 + kg + jn * tc;
                            let valid = j < khi && j >= rlo[i] && j < rhi[i];
                            smem_p[(rg * rm + i) * pstr + kg + jn * tc] = select(valid, (s[i * rn + jn] - m_new).exp(), 0.0);
                        }
                    }
                    sync_cube();

                    // Weights · V for the thread's rows and positions kg + tc·jd.
                    for k2 in 0..bk {
                        let mut pv = Array::<f32>::new(rm);
                        #[unroll]
                        for i in 0..rm {
                            pv[i] = smem_p[(rg * rm + i) * pstr + k2];
                            l[i] += pv[i];
                        }
                        #[unroll]
                        for jd in 0..rd {
                            let vv = smem_v[k2 * vs + kg + jd * tc];
                            #[unroll]
                            for i in 0..rm {
                                o[i * rd + jd] += pv[i] * vv;
                            }
                        }
                    }
                    sync_cube();
                    j0 += bk;
                }

                #[unroll]
                for i in 0..rm {
                    let r = rg * rm + i;
                    let tok = t0 + r / gc;
                    let ok = r / gc < bt && r % gc < nh && tok >= a0 && tok < a1;
                    if ok {
                        let row = tok * hq + h0 + r % gc;
                        let li = l[i];
                        #[unroll]
                        for jd in 0..rd {
                            let pos = kg + jd * tc;
                            if pos < d {
                                out[row * d + column(pos, d, nv)] = F::cast_from(select(li > 0.0, o[i * rd + jd] / li, 0.0));
                            }
                        }
                        if kg == 0 {
                            lse[row] = select(li > 0.0, m[i] + li.ln(), neg_inf);
                        }
                    }
                }
            }
            b += 1;
        }
    }
}

/// Prefill launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillTiles {
    /// Query rows per cube.
    pub bq: usize,
    /// Keys per tile.
    pub bk: usize,
    /// Row groups (threads = tr · tc).
    pub tr: usize,
    /// Threads per row group.
    pub tc: usize,
    /// Whether the plane path runs.
    pub plane: bool,
}

/// Shared memory, in bytes, of a prefill launch.
fn prefill_smem(d: usize, t: &PrefillTiles) -> usize {
    let rd = d.div_ceil(t.tc);
    let red = if t.plane { 1 } else { t.bq * t.tc };
    4 * (t.bq * (d + 1) + t.bk * (d + 1) + t.bk * rd * t.tc + t.bq * (t.bk + 1) + red)
}

/// Choose the prefill tiles for head size `d`: the largest candidate whose shared memory
/// fits the budget and whose output accumulators (rows × columns per thread) stay within
/// 64 registers; the plane path when a row group fits in one plane.
pub fn prefill_tiles(d: usize, smem_budget: usize, plane: Option<u32>) -> PrefillTiles {
    const CANDIDATES: [(usize, usize, usize, usize); 5] =
        [(64, 64, 16, 8), (64, 32, 16, 8), (32, 32, 16, 8), (16, 16, 16, 8), (8, 8, 8, 8)];
    let mut last = None;
    for (bq, bk, tr, tc) in CANDIDATES {
        let t = PrefillTiles { bq, bk, tr, tc, plane: plane.is_some_and(|w| tc <= w as usize) };
        last = Some(t);
        let regs = (bq / tr) * d.div_ceil(tc) + (bq / tr) * (bk / tc);
        if regs <= 80 && prefill_smem(d, &t) <= smem_budget {
            return t;
        }
    }
    last.expect("candidates are not empty")
}

/// `batch_prefill_with_paged_kv_cache` with the default launch choices.
pub fn batch_prefill<R: Runtime>(d: &Device<R>, p: &PrefillParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    batch_prefill_tuned(d, p, inputs, AttnTuning::default())
}

/// `batch_prefill_with_paged_kv_cache` with explicit launch choices (`splits` is ignored).
pub fn batch_prefill_tuned<R: Runtime>(d: &Device<R>, p: &PrefillParams, inputs: &GpuTensors, tuning: AttnTuning) -> Result<GpuTensors> {
    const OP: &str = "batch_prefill_with_paged_kv_cache";
    let (n, batch, hq, hk, dh) = (p.num_tokens, p.batch_size, p.num_qo_heads, p.num_kv_heads, p.head_size);
    let cache_n = p.num_pages * p.page_size * hk * dh;
    check_indexable(OP, "the cache", cache_n)?;
    check_indexable(OP, "q", n * hq * dh)?;
    let q = input(OP, inputs, "q")?;
    let kc = input(OP, inputs, "k_cache")?;
    let vc = input(OP, inputs, "v_cache")?;
    let idx = input(OP, inputs, "kv_indices")?.handle.clone();
    let ptr = input(OP, inputs, "kv_indptr")?.handle.clone();
    let last = input(OP, inputs, "kv_last_page_len")?.handle.clone();
    let qo = input(OP, inputs, "qo_indptr")?.handle.clone();

    let budget = smem_budget(d, 112 * 1024);
    let tiles = prefill_tiles(dh, budget, tuning.reduce.width(d));
    ensure!(
        prefill_smem(dh, &tiles) <= budget,
        OP,
        "head_size {dh} needs {} bytes of shared memory, more than the device's {budget}",
        prefill_smem(dh, &tiles)
    );
    let g = hq / hk;
    let gc = g.min(tiles.bq);
    let bt = tiles.bq / gc;
    let cubes = n.div_ceil(bt) * hk * g.div_ceil(gc);
    let out = d.alloc(p.dtype, n * hq * dh);
    let lse = d.alloc(DType::F32, n * hq);
    let nv = vector_width(d, p.dtype, dh);
    let (has_window, window) = window_arg(p.window_left);
    let (count, dim) = grid_cubes(cubes, (tiles.tr * tiles.tc) as u32);
    with_float!(p.dtype, F => {
        // SAFETY: q holds n·hq·dh elements and is read at token tok < t1 <= n, head
        // h0 + r % gc < hq (r % gc < nh), vector cv < dh/nv. Cache reads as in
        // `batch_decode_tuned` (page ids checked against num_pages, page indices below the
        // clamped kv_indptr[b+1] <= num_page_ids). qo_indptr is read at b <= batch (its
        // length batch + 1; the binary search reads mid < batch), kv_indptr at b + 1 <=
        // batch. Outputs row·dh + c < n·hq·dh and row < n·hq. Shared memory indices stay
        // below the comptime sizes (rows < bq, keys < bk, columns kg + tc·jd < rd·tc).
        unsafe {
            prefill_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                nv,
                ArrayArg::from_raw_parts(q.handle.clone(), n * hq * dh / nv),
                ArrayArg::from_raw_parts(kc.handle.clone(), cache_n / nv),
                ArrayArg::from_raw_parts(vc.handle.clone(), cache_n / nv),
                ArrayArg::from_raw_parts(idx, p.num_page_ids),
                ArrayArg::from_raw_parts(ptr, batch + 1),
                ArrayArg::from_raw_parts(last, batch),
                ArrayArg::from_raw_parts(qo, batch + 1),
                ArrayArg::from_raw_parts(out.clone(), n * hq * dh),
                ArrayArg::from_raw_parts(lse.clone(), n * hq),
                n,
                batch,
                hq,
                hk,
                p.page_size,
                p.num_pages,
                p.num_page_ids,
                p.causal as u32,
                has_window,
                window,
                p.sm_scale as f32,
                p.logits_soft_cap as f32,
                f32::NEG_INFINITY,
                dh,
                tiles.bq,
                tiles.bk,
                tiles.tr,
                tiles.tc,
                gc,
                tiles.plane,
            )
        }
    });
    Ok(GpuTensors::from([
        ("output".to_string(), GpuTensor::new(out, p.dtype, &[n, hq, dh])),
        ("lse".to_string(), GpuTensor::new(lse, DType::F32, &[n, hq])),
    ]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::BatchPrefillWithPagedKvCache(_) | Op::BatchDecodeWithPagedKvCache(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`):
/// page tables and `qo_indptr`, as the CPU reference.
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &Tensors) -> Result<()> {
    match op {
        ingot_core::Op::BatchPrefillWithPagedKvCache(p) => check_prefill(p, inputs),
        ingot_core::Op::BatchDecodeWithPagedKvCache(p) => {
            check_page_table(op.name(), inputs, p.batch_size, p.page_size, p.num_pages).map(|_| ())
        }
        _ => Ok(()),
    }
}
