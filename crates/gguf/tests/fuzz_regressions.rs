//! The fuzz target's checks (fuzz/fuzz_targets/gguf_reader.rs), run in the ordinary test
//! suite over every input that once crashed it (tests/fuzz_crashes/) and over the committed
//! seed corpus (fuzz/corpus/gguf_reader/). docs/fuzzing.md tells the story of each crash.

use ingot_gguf::{GgufFile, GgufWriter, Value};
use std::path::Path;

/// What the fuzz target does with one input: open it; if it opens, read everything and
/// check that writing it out and reading it back gives the same.
fn exercise(data: &[u8]) -> bool {
    let Ok(f) = GgufFile::from_bytes(data) else { return false };
    assert!(f.alignment().is_power_of_two());
    for (key, value) in f.metadata() {
        let _ = value.to_string();
        let _ = value.describe();
        assert!(f.get(key).is_some_and(|v| std::ptr::eq(v, value)));
        let _ = (f.get_u32(key), f.get_u64(key), f.get_i32(key), f.get_i64(key), f.get_usize(key));
        let _ = (f.get_f32(key), f.get_f64(key), f.get_bool(key), f.get_str(key), f.get_array(key));
        let _ = (f.get_str_array(key), f.get_f32_array(key), f.get_i32_array(key), f.get_u32_array(key));
        if let Value::Array(a) = value {
            assert_eq!(a.iter().count(), a.len());
        }
    }
    for (t, bytes) in f.tensors_with_data() {
        assert_eq!(bytes.len() as u64, t.size);
        assert_eq!(Some(t.size), t.ggml_type.bytes_for(t.numel()));
        assert!(f.find_tensor(&t.name).is_some_and(|u| std::ptr::eq(u, t)));
        let _ = f.tensor_dtype(&t.name);
    }
    assert_eq!(f.tensors_with_data().count(), f.tensors().len());
    let mut w = GgufWriter::new();
    w.version(f.version()).unwrap();
    for (k, v) in f.metadata() {
        w.set(k, v.clone());
    }
    for (t, bytes) in f.tensors_with_data() {
        w.add_tensor(&t.name, t.ggml_type, &t.dims, bytes).unwrap();
    }
    let written = w.to_bytes().unwrap();
    // Bounded output: the header, each tensor's data, at most one alignment of padding each.
    let header = f.tensors().iter().map(|t| t.file_offset).min().unwrap_or(f.file_size()).min(f.data_offset());
    let data_bytes: u64 = f.tensors().iter().map(|t| t.size).sum();
    assert!(written.len() as u64 <= header + data_bytes + (f.tensors().len() as u64 + 1) * f.alignment());
    let again = GgufFile::from_bytes(written).unwrap();
    assert_eq!(format!("{:?}", again.metadata()), format!("{:?}", f.metadata()));
    for ((a, da), (b, db)) in again.tensors_with_data().zip(f.tensors_with_data()) {
        assert_eq!((&a.name, a.ggml_type, &a.dims, a.size), (&b.name, b.ggml_type, &b.dims, b.size));
        assert_eq!(da, db);
    }
    true
}

fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn crash_inputs_no_longer_crash() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_crashes");
    let files = files_in(&dir);
    assert!(!files.is_empty());
    for (name, data) in files {
        eprintln!("{name}");
        exercise(&data);
    }
}

/// Crash 1: an f32 metadata value that is NaN (bits 0xff800009). The reader was right; the
/// fuzz target compared the value with itself by `==`. The value must come back bit for bit.
#[test]
fn crash_nan_value_reads_back_bit_for_bit() {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_crashes/nan_value_crash-41e05979.gguf")).unwrap();
    let f = GgufFile::from_bytes(data).unwrap();
    match f.get("t.inf") {
        Some(Value::F32(x)) => assert_eq!(x.to_bits(), 0xff80_0009),
        v => panic!("t.inf is {v:?}"),
    }
    assert!(f.get_f32("t.inf").unwrap().is_nan());
}

/// Crash 2: five tensors whose data ranges overlap (alignment 1; 1066 bytes of tensors in an
/// 822-byte file). The reader then accepted overlapping ranges, and the fuzz target's bound
/// on the rewritten file wrongly assumed the tensors' bytes fit in the input. Since issue 12
/// the reader refuses overlapping tensor data, naming two of the tensors.
#[test]
fn crash_overlapping_tensors_are_refused() {
    let data =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_crashes/overlapping_tensors_crash-bdee67f8.gguf")).unwrap();
    let e = GgufFile::from_bytes(data.clone()).unwrap_err().to_string();
    assert!(e.contains("the data of tensors '") && e.contains("overlap"), "{e}");
    assert!(!exercise(&data));
}

#[test]
fn committed_corpus_passes_the_fuzz_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf_reader");
    let files = files_in(&dir);
    assert!(!files.is_empty() && files.len() <= 30, "{} corpus files", files.len());
    let mut opened = 0;
    for (name, data) in &files {
        assert!(data.len() < 4096, "{name} is {} bytes", data.len());
        opened += exercise(data) as usize;
    }
    assert!(opened >= 6, "only {opened} of {} corpus files open", files.len());
}
