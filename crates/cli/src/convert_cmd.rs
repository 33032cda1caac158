//! `ingot convert`: re-save a GGUF model with its matrices in another weight format,
//! through Ingot's own dequantizers and quantizers (metadata copied as is).

use anyhow::{bail, Context, Result};
use ingot_core::DType;
use ingot_cpu::quant::{dequantize_row, quantize_row};
use ingot_gguf::{GgmlType, GgufFile, GgufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The GGUF model to read.
    input: PathBuf,
    /// Where to write the converted model.
    output: PathBuf,
    /// Target format of the 2-D weight matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k … q6_k.
    #[arg(long = "type", value_name = "FORMAT")]
    to: String,
}

pub fn run(a: ConvertArgs) -> Result<ExitCode> {
    let to: DType = a.to.parse().map_err(|e| anyhow::anyhow!("--type: {e}"))?;
    if !DType::WEIGHTS.contains(&to) {
        bail!("--type {to} is not a weight format");
    }
    let to_ggml = GgmlType::from_dtype(to).context("no ggml type for the target format")?;
    if a.output.exists() && a.output.canonicalize().ok() == a.input.canonicalize().ok() {
        bail!("output {} is the input file", a.output.display());
    }
    let file = GgufFile::open(&a.input)?;
    let mut w = GgufWriter::new();
    w.alignment(file.alignment() as u32)?;
    for (k, v) in file.metadata() {
        if k != ingot_gguf::ALIGNMENT_KEY {
            w.set(k, v.clone());
        }
    }
    let (mut converted, mut kept) = (0usize, 0usize);
    for t in file.tensors() {
        let data = file.data_of(t)?;
        let cols = t.dims[0] as usize;
        let rows = (t.numel() / t.dims[0]) as usize;
        // Matrices whose rows fit the target's blocks are converted; vectors (norms, biases) stay.
        let convert = t.dims.len() == 2 && cols % to.block_size() == 0 && t.ggml_type != to_ggml;
        if !convert {
            w.add_tensor(&t.name, t.ggml_type, &t.dims, data.to_vec())?;
            kept += 1;
            continue;
        }
        let from = file.tensor_dtype(&t.name)?;
        let mut vals = vec![0f32; rows * cols];
        dequantize_row(from, data, &mut vals)?;
        let bytes = quantize_row(to, &vals).with_context(|| format!("quantizing {}", t.name))?;
        w.add_tensor(&t.name, to_ggml, &t.dims, bytes)?;
        converted += 1;
    }
    w.write_file(&a.output)?;
    eprintln!("ingot: wrote {} ({converted} matrices as {to}, {kept} tensors kept)", a.output.display());
    Ok(ExitCode::SUCCESS)
}
