//! The writer and the reader agree: every value type (nested arrays too), tensors of several
//! ggml types, alignment, versions; typed getters; and a small valid file cut at every byte
//! or corrupted at every byte gives an error or a file, never a panic.

use ingot_core::DType;
use ingot_gguf::{Array, Error, GgmlType, GgufFile, GgufWriter, OptionalKey, Value, ValueType, MAX_ARRAY_DEPTH};

/// One value of every type, with the edge values of each.
fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.f32_inf", Value::F32(f32::NEG_INFINITY)),
        ("t.f64_neg_zero", Value::F64(-0.0)),
        ("t.bool_true", Value::Bool(true)),
        ("t.bool_false", Value::Bool(false)),
        ("t.string", Value::from("héllo ✓ \u{1F980}")),
        ("t.string_empty", Value::from("")),
        ("t.arr_u8", Value::from(vec![0u8, 1, 255])),
        ("t.arr_i8", Value::from(vec![-1i8, 127])),
        ("t.arr_u16", Value::from(vec![1u16, 65535])),
        ("t.arr_i16", Value::from(vec![-2i16, 3])),
        ("t.arr_u32", Value::from(vec![7u32])),
        ("t.arr_i32", Value::from(vec![-7i32, 0, 7])),
        ("t.arr_u64", Value::from(vec![u64::MAX, 0])),
        ("t.arr_i64", Value::from(vec![i64::MIN, i64::MAX])),
        ("t.arr_f32", Value::from(vec![0.5f32, -2.25, 1e30])),
        ("t.arr_f64", Value::from(vec![1e-300f64, -0.125])),
        ("t.arr_bool", Value::from(vec![true, false, true])),
        ("t.arr_str", Value::from(vec!["a", "", "ßç"])),
        ("t.arr_empty_f32", Value::Array(Array::F32(vec![]))),
        ("t.arr_empty_str", Value::Array(Array::String(vec![]))),
        (
            "t.arr_nested",
            Value::from(vec![
                Array::from(vec![1u32, 2]),
                Array::from(vec!["x", "y"]),
                Array::Array(vec![Array::from(vec![true]), Array::I64(vec![])]),
                Array::Array(vec![]),
            ]),
        ),
    ]
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama").set("general.name", "tiny");
    for (k, v) in every_value() {
        w.set(k, v);
    }
    let f32_bytes: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.add_tensor("a.f32", GgmlType::F32, &[3, 4], f32_bytes).unwrap();
    w.add_tensor("b.q4_k", GgmlType::Q4_K, &[256, 2], vec![7u8; 288]).unwrap();
    w.add_tensor("c.iq2_xxs", GgmlType::IQ2_XXS, &[256], vec![9u8; 66]).unwrap();
    w.add_tensor("d.f16", GgmlType::F16, &[5], vec![1u8; 10]).unwrap();
    w
}

#[test]
fn every_value_type_round_trips() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.name(), "<memory>");
    assert_eq!(f.version(), 3);
    for (k, v) in every_value() {
        let got = f.get(k).unwrap_or_else(|| panic!("{k} missing"));
        // Compare bit patterns of floats too (-0.0 == 0.0 would hide a sign flip).
        assert_eq!(format!("{got:?}"), format!("{v:?}"), "{k}");
        assert_eq!(got, &v, "{k}");
    }
    // File order is kept.
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let mut want = vec!["general.architecture", "general.name"];
    want.extend(every_value().iter().map(|(k, _)| *k));
    assert_eq!(keys, want);
    // Every value type appears, arrays of every element type too.
    for t in ValueType::ALL {
        assert!(f.metadata().iter().any(|(_, v)| v.value_type() == t), "{t}");
        assert!(f.metadata().iter().any(|(_, v)| v.as_array().is_some_and(|a| a.element_type() == t)), "array of {t}");
    }
}

#[test]
fn writing_what_was_read_gives_the_same_bytes() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.set(k, v.clone());
    }
    for (t, data) in f.tensors_with_data() {
        w.add_tensor(&t.name, t.ggml_type, &t.dims, data).unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), bytes);
}

#[test]
fn tensors_round_trip_zero_copy() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.f32", "b.q4_k", "c.iq2_xxs", "d.f16"]);
    let a = f.tensor("a.f32").unwrap();
    assert_eq!((a.ggml_type, a.dims.clone(), a.numel(), a.size), (GgmlType::F32, vec![3, 4], 12, 48));
    assert_eq!(a.shape_row_major(), [4, 3]);
    let data = f.tensor_data("a.f32").unwrap();
    let floats: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(floats, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    // The slice points into the file's bytes: zero copy.
    let base = f.bytes().as_ptr() as usize;
    assert_eq!(data.as_ptr() as usize - base, a.file_offset as usize);
    assert_eq!(f.tensor_data("b.q4_k").unwrap(), &[7u8; 288][..]);
    assert_eq!(f.tensor_data("c.iq2_xxs").unwrap(), &[9u8; 66][..]);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.file_offset, f.data_offset() + t.offset);
        assert!(t.file_offset + t.size <= f.file_size());
    }
    assert_eq!(f.data_offset() % 32, 0);
    // Dtypes: known ones map, an unsupported one is an error only when used as a dtype.
    assert_eq!(f.tensor_dtype("b.q4_k").unwrap(), DType::Q4_K);
    assert_eq!(f.tensor("c.iq2_xxs").unwrap().dtype(), None);
    let e = f.tensor_dtype("c.iq2_xxs").unwrap_err();
    assert!(matches!(e, Error::UnsupportedType { ggml_type: GgmlType::IQ2_XXS, .. }), "{e}");
    assert_eq!(e.to_string(), "<memory>: tensor 'c.iq2_xxs' has ggml type IQ2_XXS, which Ingot cannot compute with");
    let e = f.tensor_data("nope").unwrap_err();
    assert_eq!(e.to_string(), "<memory>: no tensor named 'nope'");
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes().unwrap()).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("t.u8").unwrap(), 255);
    assert_eq!(f.get_u32("t.u16").unwrap(), 65535);
    assert_eq!(f.get_u32("t.u32").unwrap(), u32::MAX);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("t.i8").unwrap(), -128);
    assert_eq!(f.get_i32("t.i32").unwrap(), i32::MIN);
    assert_eq!(f.get_usize("t.u16").unwrap(), 65535);
    assert_eq!(f.get_f32("t.f32").unwrap(), -1.5e-7);
    assert_eq!(f.get_f32("t.f64").unwrap(), std::f32::consts::PI);
    assert_eq!(f.get_f64("t.f32").unwrap(), -1.5e-7f32 as f64);
    assert!(f.get_bool("t.bool_true").unwrap());
    assert_eq!(f.get_str("t.string").unwrap(), "héllo ✓ \u{1F980}");
    assert_eq!(f.get_str_array("t.arr_str").unwrap(), ["a", "", "ßç"]);
    assert_eq!(f.get_f32_array("t.arr_f32").unwrap(), [0.5, -2.25, 1e30]);
    assert_eq!(f.get_i32_array("t.arr_i32").unwrap(), [-7, 0, 7]);
    assert_eq!(f.get_u32_array("t.arr_u16").unwrap(), [1, 65535]);
    assert_eq!(f.get_array("t.arr_nested").unwrap().len(), 4);

    // Errors name the key and the type found.
    let e = f.get_u32("t.string").unwrap_err();
    assert_eq!(e.to_string(), "<memory>: metadata key 't.string' is a string, expected an integer");
    let e = f.get_u32("t.i8").unwrap_err();
    assert_eq!(e.to_string(), "<memory>: metadata key 't.i8' = -128 does not fit in u32");
    let e = f.get_u32("t.u64").unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    let e = f.get_str("t.u32").unwrap_err();
    assert_eq!(e.to_string(), "<memory>: metadata key 't.u32' is a u32, expected a string");
    let e = f.get_f32("t.bool_true").unwrap_err();
    assert!(matches!(e, Error::WrongType { expected: "a float", .. }), "{e}");
    let e = f.get_str_array("t.arr_f32").unwrap_err();
    assert_eq!(e.to_string(), "<memory>: metadata key 't.arr_f32' is an array of 3 f32, expected an array of string");
    let e = f.get_u32_array("t.arr_i8").unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    let e = f.get_u32_array("t.arr_str").unwrap_err();
    assert!(matches!(e, Error::WrongType { .. }), "{e}");
    let e = f.get_u32("llama.block_count").unwrap_err();
    assert!(e.is_missing_key());
    assert_eq!(e.to_string(), "<memory>: no metadata key 'llama.block_count'");

    // `optional` turns only a missing key into None.
    assert_eq!(f.get_u32("nope").optional().unwrap(), None);
    assert_eq!(f.get_u32("t.u8").optional().unwrap(), Some(255));
    assert!(f.get_u32("t.string").optional().is_err());
}

#[test]
fn version_2_reads_and_other_versions_do_not() {
    let mut w = sample_writer();
    w.version(2).unwrap();
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensors().len(), 4);
    assert!(w.version(1).is_err() && w.version(4).is_err());
    for v in [0u32, 1, 4, 99] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(matches!(e, Error::UnsupportedVersion { version, .. } if version == v), "{e}");
        assert!(e.to_string().contains(&format!("unsupported GGUF version {v}")), "{e}");
    }
    let mut b = bytes;
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = GgufFile::from_bytes(b).unwrap_err().to_string();
    assert!(e.contains("big-endian"), "{e}");
}

#[test]
fn alignment_is_honoured() {
    for align in [1u32, 8, 32, 64, 256, 4096] {
        let mut w = sample_writer();
        w.alignment(align).unwrap();
        let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(f.alignment(), align as u64);
        assert_eq!(f.get_u32("general.alignment").unwrap(), align);
        assert_eq!(f.data_offset() % align as u64, 0);
        for t in f.tensors() {
            assert_eq!(t.offset % align as u64, 0, "{} at {}", t.name, t.offset);
        }
        assert_eq!(f.tensor_data("b.q4_k").unwrap(), &[7u8; 288][..]);
    }
    // Default when the key is absent.
    let f = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap()).unwrap();
    assert_eq!(f.alignment(), 32);
    assert!(f.tensors().is_empty() && f.metadata().is_empty());
    // The writer refuses what the reader would refuse.
    assert!(GgufWriter::new().alignment(48).is_err());
    let mut w = GgufWriter::new();
    w.set("general.alignment", 0u32);
    assert!(w.to_bytes().is_err());
}

#[test]
fn bad_alignment_values_are_errors() {
    for (v, why) in [(Value::U32(0), "0"), (Value::U32(48), "48"), (Value::from("32"), "string"), (Value::U64(1 << 40), "2^40")] {
        let mut w = GgufWriter::new();
        w.set("x", 1u8);
        let good = w.to_bytes().unwrap();
        // Write a valid file, then patch the value in by rewriting the metadata by hand:
        // the writer itself refuses these alignments.
        let mut b = good[..16].to_vec();
        b.extend_from_slice(&2u64.to_le_bytes()); // kv count
        b.extend_from_slice(&good[24..good.len()]);
        let key = b"general.alignment";
        let mut kv = (key.len() as u64).to_le_bytes().to_vec();
        kv.extend_from_slice(key);
        kv.extend_from_slice(&v.value_type().id().to_le_bytes());
        match &v {
            Value::U32(x) => kv.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => kv.extend_from_slice(&x.to_le_bytes()),
            Value::String(s) => {
                kv.extend_from_slice(&(s.len() as u64).to_le_bytes());
                kv.extend_from_slice(s.as_bytes());
            }
            _ => unreachable!(),
        }
        b.splice(24..24, kv);
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(matches!(&e, Error::Format { reason, .. } if reason.contains("power of two")), "{why}: {e}");
    }
}

#[test]
fn nesting_up_to_the_cap_round_trips() {
    let mut a = Array::from(vec![1u8]);
    for _ in 1..MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a]);
    }
    let mut w = GgufWriter::new();
    w.set("deep", a.clone());
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.get_array("deep").unwrap(), &a);
    // One more level: the writer refuses it (the reader would).
    let mut w = GgufWriter::new();
    w.set("deep", Array::Array(vec![a]));
    assert!(w.to_bytes().is_err());
}

#[test]
fn writer_checks_tensors() {
    let mut w = GgufWriter::new();
    w.add_tensor("x", GgmlType::F32, &[2], vec![0u8; 8]).unwrap();
    assert!(w.add_tensor("x", GgmlType::F32, &[2], vec![0u8; 8]).is_err(), "duplicate");
    assert!(w.add_tensor("y", GgmlType::F32, &[2], vec![0u8; 7]).is_err(), "short data");
    assert!(w.add_tensor("y", GgmlType::Q4_0, &[16, 2], vec![0u8; 18]).is_err(), "row not a whole block");
    assert!(w.add_tensor("y", GgmlType::F32, &[], vec![]).is_err(), "no dims");
    assert!(w.add_tensor("y", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4]).is_err(), "5 dims");
    assert!(w.add_tensor("y", GgmlType::F32, &[0], vec![]).is_err(), "zero dim");
    assert!(w.add_tensor("y", GgmlType::F32, &[u64::MAX, 2], vec![]).is_err(), "overflow");
}

#[test]
fn open_reads_a_file_through_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    sample_writer().write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.name(), path.display().to_string());
    assert_eq!(f.tensor_data("b.q4_k").unwrap(), &[7u8; 288][..]);
    // mmap is page aligned, so tensor data is aligned in memory too.
    assert_eq!(f.tensor_data("a.f32").unwrap().as_ptr() as usize % 32, 0);
    // Errors name the file.
    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().starts_with(&missing.display().to_string()), "{e}");
    let e = GgufFile::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: at byte 0: unexpected end of file", empty.display())), "{e}");
}

/// The length below which cutting the file must fail: the end of the last tensor's data.
fn min_valid_len(bytes: &[u8]) -> usize {
    let f = GgufFile::from_bytes(bytes.to_vec()).unwrap();
    f.tensors().iter().map(|t| (t.file_offset + t.size) as usize).max().unwrap_or(f.data_offset() as usize).min(bytes.len())
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    for align in [32u32, 1] {
        let mut w = sample_writer();
        w.alignment(align).unwrap();
        let bytes = w.to_bytes().unwrap();
        let min_len = min_valid_len(&bytes);
        for len in 0..bytes.len() {
            let r = GgufFile::from_bytes(&bytes[..len]);
            if len < min_len {
                let e = r.expect_err(&format!("file cut to {len} of {} bytes opened", bytes.len()));
                match e {
                    Error::Format { ref file, offset, .. } => {
                        assert_eq!(file, "<memory>");
                        assert!(offset <= len as u64, "cut at {len}: error at byte {offset}: {e}");
                    }
                    e => panic!("cut at {len}: unexpected error kind {e}"),
                }
            } else {
                assert!(r.is_ok(), "cut at {len} in trailing padding: {}", r.unwrap_err());
            }
        }
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    let bytes = sample_writer().to_bytes().unwrap();
    let header_end = min_valid_len(&bytes);
    let (mut ok, mut err) = (0, 0);
    for i in 0..header_end {
        for v in [0x00u8, 0xff, 0x80, 0x01, bytes[i] ^ 0x10] {
            let mut b = bytes.clone();
            b[i] = v;
            match GgufFile::from_bytes(b) {
                Ok(f) => {
                    ok += 1;
                    // Everything the file says must be readable.
                    for (t, d) in f.tensors_with_data() {
                        assert_eq!(d.len() as u64, t.size);
                    }
                    assert_eq!(f.tensors_with_data().count(), f.tensors().len());
                    for (_, v) in f.metadata() {
                        let _ = v.to_string();
                    }
                }
                Err(e) => {
                    err += 1;
                    assert!(e.to_string().starts_with("<memory>"), "{e}");
                }
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
}

/// The fuzzing seed corpus (fuzz/corpus/gguf_reader/seed_*.gguf, each under 4 KB) is
/// exactly what the writer makes today and opens cleanly. Rewrite it with
/// `INGOT_WRITE_FUZZ_SEEDS=1 cargo test -p ingot-gguf --test roundtrip fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf_reader");
    let mut seeds: Vec<(&str, GgufWriter)> = vec![("empty", GgufWriter::new())];
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.set(k, v);
    }
    seeds.push(("every_value", w));
    seeds.push(("sample", sample_writer()));
    let mut w = GgufWriter::new();
    w.version(2).unwrap().alignment(64).unwrap();
    w.set("general.architecture", "qwen2").set("tokenizer.ggml.tokens", vec!["a", "bb", "ccc"]);
    w.add_tensor("x", GgmlType::Q8_0, &[32, 2], vec![3u8; 68]).unwrap();
    w.add_tensor("y", GgmlType::BF16, &[3, 1, 1, 2], vec![4u8; 12]).unwrap();
    seeds.push(("v2_align64", w));
    let mut w = GgufWriter::new();
    w.alignment(1).unwrap();
    for (i, t) in [GgmlType::F32, GgmlType::I8, GgmlType::Q4_1, GgmlType::MXFP4, GgmlType::Q1_0].into_iter().enumerate() {
        let dims = [t.block_size(), 1];
        w.add_tensor(&format!("t{i}"), t, &dims, vec![i as u8; t.type_size() as usize]).unwrap();
    }
    seeds.push(("align1_types", w));
    let mut w = GgufWriter::new();
    let mut a = Array::from(vec![1u16, 2]);
    for _ in 1..MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a, Array::from(vec![false])]);
    }
    w.set("deep", a);
    seeds.push(("nested", w));
    let rewrite = std::env::var("INGOT_WRITE_FUZZ_SEEDS").as_deref() == Ok("1");
    for (name, w) in seeds {
        let bytes = w.to_bytes().unwrap();
        assert!(bytes.len() < 4096, "{name}: {} bytes", bytes.len());
        GgufFile::from_bytes(bytes.clone()).unwrap_or_else(|e| panic!("seed {name} does not open: {e}"));
        let path = dir.join(format!("seed_{name}.gguf"));
        if rewrite {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let have = std::fs::read(&path).unwrap_or_default();
            assert!(have == bytes, "{} is stale: rerun with INGOT_WRITE_FUZZ_SEEDS=1", path.display());
        }
    }
}
