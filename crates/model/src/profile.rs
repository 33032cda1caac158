//! Where a forward pass spends its time, op by op, when `INGOT_PROFILE_OPS` is set: `1`
//! times each op call as issued (on a GPU that is the host's time to check, allocate and
//! launch it; the kernels run behind), `sync` waits for the device after each op (the
//! kernel's time as well, plus one synchronisation each). `ingot bench` prints the table
//! on stderr. Off, it costs one relaxed load per op.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 0: not read yet, 1: off, 2: as issued, 3: synchronised.
static MODE: AtomicU8 = AtomicU8::new(0);

#[derive(Default)]
struct Table {
    ops: BTreeMap<&'static str, (u64, Duration)>,
    passes: u64,
    pass_time: Duration,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let m = match std::env::var("INGOT_PROFILE_OPS").as_deref() {
                Ok("sync") => 3,
                Ok(v) if !v.is_empty() && v != "0" => 2,
                _ => 1,
            };
            MODE.store(m, Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Whether op calls are being timed.
pub fn enabled() -> bool {
    mode() > 1
}

/// Whether each op should be waited for before its time is taken.
pub(crate) fn synchronised() -> bool {
    mode() == 3
}

/// A start time when profiling.
pub(crate) fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Adds the time since `t0` to op `name`.
pub(crate) fn record(name: &'static str, t0: Option<Instant>) {
    let Some(t0) = t0 else { return };
    let dt = t0.elapsed();
    if let Ok(mut t) = TABLE.lock() {
        let e = t.get_or_insert_with(Table::default).ops.entry(name).or_default();
        e.0 += 1;
        e.1 += dt;
    }
}

/// Adds one whole forward pass that took since `t0`.
pub(crate) fn record_pass(t0: Option<Instant>) {
    let Some(t0) = t0 else { return };
    let dt = t0.elapsed();
    if let Ok(mut t) = TABLE.lock() {
        let t = t.get_or_insert_with(Table::default);
        t.passes += 1;
        t.pass_time += dt;
    }
}

/// Forgets what was recorded (after a warm-up, say).
pub fn reset() {
    if let Ok(mut t) = TABLE.lock() {
        *t = None;
    }
}

/// The table of what was recorded (op, calls, calls per pass, total ms, µs per call, share
/// of the passes' time), most time first; `None` when profiling is off or nothing ran.
pub fn report() -> Option<String> {
    if !enabled() {
        return None;
    }
    let g = TABLE.lock().ok()?;
    let t = g.as_ref()?;
    let mut rows: Vec<_> = t.ops.iter().collect();
    rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1));
    let passes = t.passes.max(1) as f64;
    let whole = t.pass_time.as_secs_f64().max(1e-12);
    let mode = if synchronised() { "each op waited for (sync)" } else { "as issued" };
    let mut s = format!(
        "op profile ({mode}): {} forward passes, {:.3} ms each\n| op | calls | per pass | total ms | µs per call | share |\n|---|---|---|---|---|---|\n",
        t.passes,
        whole * 1e3 / passes
    );
    let mut sum = 0.0;
    for (name, (n, d)) in rows {
        let ms = d.as_secs_f64() * 1e3;
        sum += ms;
        s += &format!(
            "| {name} | {n} | {:.1} | {ms:.2} | {:.2} | {:.1}% |\n",
            *n as f64 / passes,
            ms * 1e3 / *n as f64,
            ms / 1e3 / whole * 100.0
        );
    }
    s += &format!("| (outside ops) | | | {:.2} | | {:.1}% |\n", whole * 1e3 - sum, (1.0 - sum / 1e3 / whole) * 100.0);
    Some(s)
}
