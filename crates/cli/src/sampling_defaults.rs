//! The sampling settings `run`, `chat` and `serve` use where the user gives none: the
//! model's recommended ones, from the `general.sampling.*` keys of its GGUF file (llama.cpp's
//! names, read as llama.cpp's `common_init_sampler_from_model` reads them), else llama.cpp's
//! defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition penalty).
//!
//! A key whose value cannot be used (not a number, NaN, a top-p of 0) is reported and the
//! default kept. Keys for samplers the engine does not have (`sequence`, `xtc_*`,
//! `mirostat*`, `penalty_last_n`) are not read.

use ingot_engine::SamplingParams;
use ingot_gguf::{GgufFile, Value};

/// The keys read, llama.cpp's names (src/llama-arch.cpp, `LLM_KV_GENERAL_SAMPLING_*`).
pub const TEMP_KEY: &str = "general.sampling.temp";
pub const TOP_K_KEY: &str = "general.sampling.top_k";
pub const TOP_P_KEY: &str = "general.sampling.top_p";
pub const MIN_P_KEY: &str = "general.sampling.min_p";
pub const PENALTY_REPEAT_KEY: &str = "general.sampling.penalty_repeat";

/// Default sampling settings and where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingDefaults {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 is off.
    pub top_k: usize,
    /// 1 is off.
    pub top_p: f32,
    /// 0 is off.
    pub min_p: f32,
    /// 1 is off.
    pub repetition_penalty: f32,
    /// The keys of the model file that gave a value, in the order above.
    pub from_model: Vec<&'static str>,
    /// Keys of the model file that were present but not usable, each with why.
    pub ignored: Vec<String>,
}

impl Default for SamplingDefaults {
    /// llama.cpp's defaults (common/common.h, `common_params_sampling`).
    fn default() -> SamplingDefaults {
        SamplingDefaults {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            from_model: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

/// A metadata value as a number: any integer or float, or a string that is one (llama.cpp
/// reads these keys through their text).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.trim().parse::<f64>().ok(),
        v => v.as_float().or_else(|| v.as_integer().map(|i| i as f64)),
    }
}

impl SamplingDefaults {
    /// The model's settings where its file has them, llama.cpp's defaults for the rest.
    /// Values are taken with llama.cpp's meaning: a temperature ≤ 0 is greedy, a top-k ≤ 0
    /// and a min-p ≤ 0 are off, a top-p ≥ 1 is off.
    pub fn from_gguf(file: &GgufFile) -> SamplingDefaults {
        let mut d = SamplingDefaults::default();
        let read = |key: &'static str, d: &mut SamplingDefaults, check: &dyn Fn(f64) -> Result<f64, &'static str>| -> Option<f64> {
            let v = file.get(key)?;
            let got = match number(v) {
                Some(x) if x.is_finite() => check(x),
                Some(_) => Err("not a finite number"),
                None => Err("not a number"),
            };
            match got {
                Ok(x) => {
                    d.from_model.push(key);
                    Some(x)
                }
                Err(why) => {
                    let shown = match v {
                        Value::String(s) => format!("{s:?}"),
                        v => number(v).map(|x| x.to_string()).unwrap_or_else(|| v.describe()),
                    };
                    d.ignored.push(format!("{key} = {shown} is {why}"));
                    None
                }
            }
        };
        // Ranges as f32 holds them, so that the engine takes every value read.
        const BIG: f64 = f32::MAX as f64;
        const TINY: f64 = f32::MIN_POSITIVE as f64;
        let positive = |x: f64| match x {
            x if x <= 0.0 => Err("not above 0"),
            x if x < TINY => Err("too small"),
            x if x > BIG => Err("too large"),
            x => Ok(x),
        };
        if let Some(t) = read(TEMP_KEY, &mut d, &|x| if x <= BIG { Ok(x.max(0.0)) } else { Err("too large") }) {
            d.temperature = t as f32;
        }
        if let Some(k) = read(TOP_K_KEY, &mut d, &|x| if x.fract() == 0.0 { Ok(x.max(0.0)) } else { Err("not a whole number") }) {
            d.top_k = if k >= usize::MAX as f64 { usize::MAX } else { k as usize };
        }
        if let Some(p) = read(TOP_P_KEY, &mut d, &|x| positive(x.min(1.0))) {
            d.top_p = p as f32;
        }
        if let Some(p) = read(MIN_P_KEY, &mut d, &|x| if x <= 1.0 { Ok(x.max(0.0)) } else { Err("above 1") }) {
            d.min_p = p as f32;
        }
        if let Some(r) = read(PENALTY_REPEAT_KEY, &mut d, &positive) {
            d.repetition_penalty = r as f32;
        }
        d
    }

    /// `p` with these settings (everything else of `p` kept).
    pub fn params(&self, p: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            ..p
        }
    }

    /// Where the settings came from, for a line on stderr: `llama.cpp's defaults`, or the
    /// keys of the model file that gave them.
    pub fn source(&self) -> String {
        match self.from_model.as_slice() {
            [] => "llama.cpp's defaults".into(),
            keys => {
                let names: Vec<&str> = keys.iter().map(|k| k.trim_start_matches("general.sampling.")).collect();
                let rest = if keys.len() < 5 { ", llama.cpp's defaults for the rest" } else { "" };
                format!("the model's general.sampling.{{{}}}{rest}", names.join(", "))
            }
        }
    }
}

/// A sampling configuration in one line: `temperature 0.8, top-k 40, top-p 0.95, min-p 0.05`
/// (`greedy` at temperature 0; filters that are off and a repetition penalty of 1 left out).
pub fn describe(p: &SamplingParams) -> String {
    if p.temperature == 0.0 {
        return "greedy (temperature 0)".into();
    }
    let mut parts = vec![format!("temperature {}", p.temperature)];
    if p.top_k > 0 {
        parts.push(format!("top-k {}", p.top_k));
    }
    if p.top_p < 1.0 {
        parts.push(format!("top-p {}", p.top_p));
    }
    if p.min_p > 0.0 {
        parts.push(format!("min-p {}", p.min_p));
    }
    if p.repetition_penalty != 1.0 {
        parts.push(format!("repeat-penalty {}", p.repetition_penalty));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_gguf::GgufWriter;

    fn file(keys: &[(&str, Value)]) -> GgufFile {
        let mut w = GgufWriter::new();
        w.set("general.architecture", "llama");
        for (k, v) in keys {
            w.set(k, v.clone());
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn without_keys_llama_cpp_defaults() {
        let d = SamplingDefaults::from_gguf(&file(&[]));
        assert_eq!(d, SamplingDefaults::default());
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p, d.repetition_penalty), (0.8, 40, 0.95, 0.05, 1.0));
        assert_eq!(d.source(), "llama.cpp's defaults");
        let p = d.params(SamplingParams { seed: 7, max_tokens: 3, ..Default::default() });
        assert_eq!((p.temperature, p.top_k, p.top_p, p.min_p, p.seed, p.max_tokens), (0.8, 40, 0.95, 0.05, 7, 3));
        assert_eq!(describe(&p), "temperature 0.8, top-k 40, top-p 0.95, min-p 0.05");
        assert_eq!(describe(&SamplingParams::default()), "greedy (temperature 0)");
    }

    #[test]
    fn keys_of_any_numeric_type_are_read() {
        let d = SamplingDefaults::from_gguf(&file(&[
            (TEMP_KEY, Value::F32(0.6)),
            (TOP_K_KEY, Value::I32(20)),
            (TOP_P_KEY, Value::F64(0.9)),
            (MIN_P_KEY, Value::String("0.1".into())),
            (PENALTY_REPEAT_KEY, Value::U8(2)),
        ]));
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p, d.repetition_penalty), (0.6, 20, 0.9, 0.1, 2.0));
        assert_eq!(d.from_model.len(), 5);
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        assert_eq!(d.source(), "the model's general.sampling.{temp, top_k, top_p, min_p, penalty_repeat}");
        let one = SamplingDefaults::from_gguf(&file(&[(TEMP_KEY, Value::F32(0.0))]));
        assert_eq!((one.temperature, one.top_k), (0.0, 40));
        assert_eq!(one.source(), "the model's general.sampling.{temp}, llama.cpp's defaults for the rest");
    }

    #[test]
    fn llama_cpp_meanings_and_unusable_values() {
        // Negative temperature: greedy; top-k <= 0 and min-p <= 0: off; top-p >= 1: off.
        let d = SamplingDefaults::from_gguf(&file(&[
            (TEMP_KEY, Value::F32(-1.0)),
            (TOP_K_KEY, Value::I64(-5)),
            (TOP_P_KEY, Value::F32(3.0)),
            (MIN_P_KEY, Value::F32(-0.5)),
        ]));
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (0.0, 0, 1.0, 0.0));
        assert!(d.ignored.is_empty());
        // Unusable values keep the defaults and say why.
        let d = SamplingDefaults::from_gguf(&file(&[
            (TEMP_KEY, Value::String("hot".into())),
            (TOP_K_KEY, Value::F32(2.5)),
            (TOP_P_KEY, Value::F32(0.0)),
            (MIN_P_KEY, Value::F32(1.5)),
            (PENALTY_REPEAT_KEY, Value::F64(f64::NAN)),
        ]));
        let base = SamplingDefaults::default();
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p, d.repetition_penalty), (0.8, 40, 0.95, 0.05, 1.0));
        assert_eq!(d.from_model, Vec::<&str>::new());
        assert_eq!(d.ignored.len(), 5, "{:?}", d.ignored);
        assert_eq!(d.ignored[0], "general.sampling.temp = \"hot\" is not a number");
        assert_eq!(d.ignored[1], "general.sampling.top_k = 2.5 is not a whole number");
        assert_eq!(d.ignored[2], "general.sampling.top_p = 0 is not above 0");
        assert!(d.ignored[4].contains("not a finite number"), "{:?}", d.ignored);
        assert_eq!(d.source(), base.source());
        // Booleans and arrays are not numbers.
        let d = SamplingDefaults::from_gguf(&file(&[(TEMP_KEY, Value::Bool(true))]));
        assert_eq!((d.temperature, d.ignored.len()), (0.8, 1));
        // Whatever the file says, the result is something the engine takes.
        for v in [Value::F64(1e-300), Value::F64(1e300), Value::U64(u64::MAX), Value::I64(i64::MIN)] {
            let keys: Vec<(&str, Value)> =
                [TEMP_KEY, TOP_K_KEY, TOP_P_KEY, MIN_P_KEY, PENALTY_REPEAT_KEY].iter().map(|k| (*k, v.clone())).collect();
            let d = SamplingDefaults::from_gguf(&file(&keys));
            d.params(SamplingParams::default()).validate().unwrap_or_else(|e| panic!("{v:?}: {e}"));
        }
    }
}
