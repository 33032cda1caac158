//! `ingot golden gen | check | support`.

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use ingot_core::{Backend, OpKind};
use ingot_golden::check::{check_dir, CaseReport, Status};
use ingot_golden::{generate, suite, Flags, FLAGS};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum GoldenCmd {
    /// Write golden artifacts: DIR/CASE/OP/meta.json and one raw little-endian file per tensor.
    ///
    /// One case: `ingot golden gen --op gemm --m 8 --n 16 --k 12 --transa false --transb true --case NAME`.
    /// A suite: `ingot golden gen --suite standard --out DIR`.
    Gen(GenArgs),
    /// Recompute every artifact under DIR on a backend and compare with the stored outputs.
    Check(CheckArgs),
    /// Print the op × backend support table (Markdown) from the op registry.
    Support,
    /// Print docs/ops.md (what every op computes) from the op list's spec text.
    OpsDoc,
}

#[derive(clap::Args)]
pub struct GenArgs {
    /// The op to generate (see `ingot golden support` for the list); aliases cast_type, batch_prefill_attention.
    #[arg(long, conflicts_with = "suite", required_unless_present = "suite")]
    op: Option<String>,
    /// A named suite instead of one op: standard or quick.
    #[arg(long)]
    suite: Option<String>,
    /// Case name: the artifacts go to OUT/CASE/OP.
    #[arg(long, default_value = "default", conflicts_with = "suite")]
    case: String,
    /// Seed of the input generator: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "artifacts")]
    out: PathBuf,
    #[command(flatten)]
    flags: OpFlags,
}

/// The op flags, declared from the registry in `ingot_golden::FLAGS`.
pub struct OpFlags(Vec<(String, String)>);

const BOOL_FLAGS: &[&str] = &["transa", "transb", "use_bias", "gemma", "interleave", "causal"];

impl FromArgMatches for OpFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut v = Vec::new();
        for (name, _) in FLAGS {
            if let Some(val) = m.get_one::<String>(name) {
                v.push((name.to_string(), val.clone()));
            }
        }
        Ok(OpFlags(v))
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for OpFlags {
    fn augment_args(cmd: Command) -> Command {
        FLAGS.iter().fold(cmd, |c, (name, help)| {
            let a = Arg::new(*name).long(*name).help(*help).help_heading("Op flags").action(ArgAction::Set);
            let a = if BOOL_FLAGS.contains(name) {
                a.value_name("BOOL").num_args(0..=1).default_missing_value("true")
            } else {
                a.value_name("VALUE").allow_hyphen_values(true)
            };
            c.arg(a)
        })
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Directory holding artifacts (searched recursively for meta.json).
    dir: PathBuf,
    /// Backend to check: cpu (the fast CPU kernels models run), reference (the f64 CPU
    /// reference), and the GPU backends built in: gpu, gpu:wgpu, gpu:cuda, gpu:metal.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Print a JSON report instead of the table.
    #[arg(long)]
    json: bool,
    /// Print passing cases too (the table shows failures, errors and skips by default).
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(cmd: GoldenCmd) -> Result<ExitCode> {
    match cmd {
        GoldenCmd::Gen(a) => gen(a),
        GoldenCmd::Check(a) => check(a),
        GoldenCmd::Support => {
            print!("{}", support_table());
            Ok(ExitCode::SUCCESS)
        }
        GoldenCmd::OpsDoc => {
            print!("{}", ingot_core::ops_doc());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn gen(a: GenArgs) -> Result<ExitCode> {
    if let Some(name) = &a.suite {
        if !a.flags.0.is_empty() {
            bail!(
                "op flags ({}) cannot be combined with --suite",
                a.flags.0.iter().map(|(k, _)| format!("--{k}")).collect::<Vec<_>>().join(", ")
            );
        }
        let entries = suite::suite(name).with_context(|| format!("unknown suite '{name}' (known: {})", suite::SUITES.join(", ")))?;
        let n = entries.len();
        for (i, e) in entries.into_iter().enumerate() {
            let flags = Flags::new(e.flags.clone())?;
            let case = generate(e.op, &flags, a.seed, &e.name).with_context(|| format!("suite case {}/{}", e.name, e.op.name()))?;
            case.write(&a.out)?;
            if (i + 1) % 50 == 0 || i + 1 == n {
                eprintln!("[{}/{n}] written", i + 1);
            }
        }
        eprintln!("wrote {n} cases of suite '{name}' to {}", a.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let op_name = a.op.as_deref().unwrap_or_default();
    let kind = OpKind::from_name(op_name).with_context(|| {
        let names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown op '{op_name}' (known: {})", names.join(", "))
    })?;
    let flags = Flags::new(a.flags.0)?;
    let case = generate(kind, &flags, a.seed, &a.case)?;
    let dir = case.write(&a.out)?;
    eprintln!("wrote {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The GPU backends compiled into this binary, by `--backend` name (`gpu` picks the first
/// of them whose device opens: CUDA, then wgpu).
fn gpu_backend_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("gpu:cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("gpu:wgpu");
    }
    if cfg!(feature = "metal") {
        v.push("gpu:metal");
    }
    v
}

/// Open one GPU backend by name; `None` when it is compiled in but its device cannot be opened.
fn open_gpu(name: &str) -> Option<Box<dyn Backend>> {
    match name {
        #[cfg(feature = "cuda")]
        "gpu:cuda" => ingot_gpu::CudaBackend::cuda(name).map(|b| Box::new(b) as Box<dyn Backend>),
        #[cfg(feature = "wgpu")]
        "gpu:wgpu" | "gpu:metal" => ingot_gpu::WgpuBackend::wgpu(name).map(|b| Box::new(b) as Box<dyn Backend>),
        _ => None,
    }
}

/// Backends compiled into this binary, by `--backend` name.
fn backend(name: &str) -> Result<Box<dyn Backend>> {
    let gpus = gpu_backend_names();
    let available = || ["cpu", "reference"].iter().chain(gpus.iter()).copied().collect::<Vec<_>>().join(", ");
    match name {
        "cpu" => Ok(Box::new(ingot_cpu::CpuDevice)),
        "reference" => Ok(Box::new(ingot_cpu::CpuBackend)),
        "gpu" => {
            if gpus.is_empty() {
                bail!("backend 'gpu': this ingot was built without GPU backends (available: {})", available());
            }
            for g in &gpus {
                if let Some(b) = open_gpu(g) {
                    return Ok(b);
                }
            }
            bail!("backend 'gpu': no device found for {} (is a Vulkan driver or CUDA installed?)", gpus.join(", "))
        }
        n if gpus.contains(&n) => {
            open_gpu(n).with_context(|| format!("backend '{n}': no device found (is a Vulkan driver or CUDA installed?)"))
        }
        "gpu:wgpu" | "gpu:cuda" | "gpu:metal" => {
            bail!("backend '{name}' is not built into this ingot (available: {}; rebuild with --features {})", available(), &name[4..])
        }
        other => bail!("unknown backend '{other}' (available: {})", available()),
    }
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let be = backend(&a.backend)?;
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let reports = check_dir(&a.dir, be.as_ref())?;
    let count = |s: Status| reports.iter().filter(|r| r.status == s).count();
    let (pass, fail, skip, err) = (count(Status::Pass), count(Status::Fail), count(Status::Skip), count(Status::Error));
    if a.json {
        let j = serde_json::json!({
            "backend": be.name(),
            "output_sentinels": be.guards_outputs(),
            "summary": {"pass": pass, "fail": fail, "skip": skip, "error": err},
            "cases": reports,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print_table(&reports, a.verbose);
        let guards = if be.guards_outputs() { "sentinels around every output" } else { "no output sentinels on this backend" };
        println!("{}: {pass} passed, {fail} failed, {skip} skipped, {err} errors ({} cases; {guards})", be.name(), reports.len());
    }
    Ok(if fail + err > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_table(reports: &[CaseReport], verbose: bool) {
    println!("{:<6} {:<34} {:<28} {:<6} {}", "status", "op", "case", "dtype", "worst / detail");
    for r in reports {
        if r.status == Status::Pass && !verbose {
            continue;
        }
        let status = match r.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Error => "ERROR",
        };
        let worst: Vec<String> = r.outputs.iter().map(|o| format!("{}:{}={:.2e}", o.name, o.metric, o.verdict.worst)).collect();
        let detail = if r.message.is_empty() { worst.join(" ") } else { r.message.clone() };
        let case = if r.case.is_empty() { r.dir.display().to_string() } else { r.case.clone() };
        println!("{status:<6} {:<34} {:<28} {:<6} {detail}", r.op, case, r.dtype);
    }
}

/// The op × backend × dtype support table, from the op registry and the standard suite's
/// cases: the reference's `supports`; the CPU device's, with the kernel each case runs on
/// (`ingot_cpu::device_ops::fast_kernel`); and for each GPU backend what it implements per
/// dtype (`ingot_gpu::implements`, the same for wgpu, CUDA and Metal). Nothing depends on
/// the machine's devices or on the GPU backends this binary was built with.
pub fn support_table() -> String {
    type Cell = Box<dyn Fn(&ingot_core::Op) -> Option<&'static str>>;
    let cpu: Cell = Box::new(|op| match Backend::supports(&ingot_cpu::CpuDevice, op) {
        false => None,
        true if ingot_cpu::device_ops::fast_kernel(op) => Some("fast"),
        true => Some("reference"),
    });
    let mut columns: Vec<(&str, Cell)> = vec![("reference", Box::new(|op| ingot_cpu::CpuBackend.supports(op).then_some(""))), ("cpu", cpu)];
    for g in ["gpu:wgpu", "gpu:cuda", "gpu:metal"] {
        columns.push((g, Box::new(|op| ingot_gpu::implements(op).then_some(""))));
    }
    let mut s = String::from("<!-- generated by `ingot golden support`; do not edit by hand -->\n# Op support\n\n");
    s.push_str(
        "A cell lists the dtypes of the standard suite the backend runs; `-` means none.\n\n\
         - `reference`: the f64 CPU reference (`--backend reference`), the oracle of every other backend.\n\
         - `cpu`: the CPU device models run on (`--backend cpu`): `fast:` dtypes run on the fast kernels\n  \
         (SIMD, threads, f32 arithmetic), `reference:` dtypes on the f64 reference through host copies.\n\
         - GPU columns list the kernels that exist; at run time a device must also support the dtype\n  \
         (lavapipe, CI's Vulkan device, has no bf16: those cases are reported as skipped there).\n",
    );
    s.push_str("\n| op |");
    for (name, _) in &columns {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    for _ in &columns {
        s.push_str("---|");
    }
    s.push('\n');
    let entries = suite::standard();
    for &kind in OpKind::ALL {
        s.push_str(&format!("| `{}` |", kind.name()));
        for (_, cell) in &columns {
            // Dtypes by the label of the kernel that runs them, in order of first appearance.
            let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
            for e in entries.iter().filter(|e| e.op == kind) {
                let Ok(flags) = Flags::new(e.flags.clone()) else { continue };
                // Only the parameters matter here; generation is cheap for the support check's purposes.
                let Ok(case) = generate(kind, &flags, 0, &e.name) else { continue };
                let Some(label) = cell(&case.op) else { continue };
                let d = case.op.dtype().name().to_string();
                match groups.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, dts)) if !dts.contains(&d) => dts.push(d),
                    Some(_) => {}
                    None => groups.push((label, vec![d])),
                }
            }
            groups.sort_by_key(|(l, _)| *l != "fast");
            let text: Vec<String> =
                groups.iter().map(|(l, dts)| if l.is_empty() { dts.join(", ") } else { format!("{l}: {}", dts.join(", ")) }).collect();
            s.push_str(&format!(" {} |", if text.is_empty() { "-".to_string() } else { text.join("; ") }));
        }
        s.push('\n');
    }
    s
}
