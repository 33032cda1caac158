//! Feeds arbitrary bytes to the in-memory GGUF reader. Whatever opens must be fully
//! readable (every metadata value through every getter, every tensor slice), and must
//! survive a write-and-read-back round trip unchanged.

#![no_main]

use ingot_gguf::{GgufFile, GgufWriter, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data) else { return };
    assert!(f.alignment().is_power_of_two());
    for (key, value) in f.metadata() {
        let _ = value.to_string();
        let _ = value.describe();
        // The same entry (by address: a NaN value is not equal to itself).
        assert!(f.get(key).is_some_and(|v| std::ptr::eq(v, value)));
        // Every getter answers with a value or an error, never a panic.
        let _ = (f.get_u32(key), f.get_u64(key), f.get_i32(key), f.get_i64(key), f.get_usize(key));
        let _ = (f.get_f32(key), f.get_f64(key), f.get_bool(key), f.get_str(key), f.get_array(key));
        let _ = (f.get_str_array(key), f.get_f32_array(key), f.get_i32_array(key), f.get_u32_array(key));
        if let Value::Array(a) = value {
            assert_eq!(a.iter().count(), a.len());
        }
    }
    let mut total = 0u64;
    for (t, bytes) in f.tensors_with_data() {
        assert_eq!(bytes.len() as u64, t.size);
        assert_eq!(Some(t.size), t.ggml_type.bytes_for(t.numel()));
        assert!(t.file_offset + t.size <= f.file_size());
        assert!(f.find_tensor(&t.name).is_some_and(|u| std::ptr::eq(u, t)));
        let _ = f.tensor_dtype(&t.name);
        total += 1;
    }
    assert_eq!(total as usize, f.tensors().len());

    // Round trip: what the reader accepted, the writer writes and the reader reads back the same.
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
    // Debug strings compare NaNs by their printing, which `==` would not.
    assert_eq!(format!("{:?}", again.metadata()), format!("{:?}", f.metadata()));
    assert_eq!(again.tensors().len(), f.tensors().len());
    for ((a, da), (b, db)) in again.tensors_with_data().zip(f.tensors_with_data()) {
        assert_eq!((&a.name, a.ggml_type, &a.dims, a.size), (&b.name, b.ggml_type, &b.dims, b.size));
        assert_eq!(da, db);
    }
});
