//! Hand-made hostile headers: each gives an `Error` naming `<memory>`, the byte offset and
//! the reason, without panicking and without allocating what the header claims.
//! Crash inputs found by fuzzing (fuzz/, docs/fuzzing.md) are kept at the end.

use ingot_gguf::{Error, GgufFile, MAX_ARRAY_DEPTH};

/// A raw little-endian byte builder, for headers the writer would refuse to produce.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(tensors).u64(kvs);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A u32 metadata entry.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ggml_type).u64(offset)
    }
    fn pad_to(&mut self, align: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// Opens the bytes, expects a format error, and returns its offset and reason.
fn format_error(r: &Raw) -> (u64, String) {
    match GgufFile::from_bytes(r.0.clone()) {
        Ok(_) => panic!("hostile file opened"),
        Err(Error::Format { file, offset, reason }) => {
            assert_eq!(file, "<memory>");
            let msg = format!("{file}: at byte {offset}: {reason}");
            assert_eq!(GgufFile::from_bytes(r.0.clone()).unwrap_err().to_string(), msg);
            (offset, reason)
        }
        Err(e) => panic!("expected a format error, got {e}"),
    }
}

fn assert_reason(r: &Raw, offset: u64, needle: &str) {
    let (at, reason) = format_error(r);
    assert!(reason.contains(needle), "reason {reason:?} lacks {needle:?}");
    assert_eq!(at, offset, "offset of {reason:?}");
}

/// A valid one-tensor file: 4 f32 at data offset 0.
fn one_tensor(dims: &[u64], ggml_type: u32, offset: u64, data: usize) -> Raw {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", dims, ggml_type, offset).pad_to(32).zeros(data);
    r
}

#[test]
fn the_valid_baseline_opens() {
    let f = GgufFile::from_bytes(one_tensor(&[4], 0, 0, 16).0).unwrap();
    assert_eq!(f.tensor_data("w").unwrap(), &[0u8; 16][..]);
}

#[test]
fn not_gguf() {
    assert_reason(&Raw(b"GGML\x03\0\0\0".to_vec()), 0, "not a GGUF file");
    assert_reason(&Raw(b"\x7fELF".to_vec()), 0, r#"not a GGUF file: it starts with "\x7fELF", not "GGUF""#);
    assert_reason(&Raw(b"GG".to_vec()), 0, "unexpected end of file reading the GGUF magic: needs 4 bytes, 2 left");
    assert_reason(&Raw(Vec::new()), 0, "unexpected end of file");
}

#[test]
fn huge_counts() {
    assert_reason(&Raw::header(3, u64::MAX, 0), 8, "tensor count 18446744073709551615 cannot fit");
    assert_reason(&Raw::header(3, 0, u64::MAX), 16, "metadata entry count 18446744073709551615 cannot fit");
    assert_reason(&Raw::header(3, 1 << 40, 1 << 40), 16, "cannot fit");
    // Each count alone fits the bytes left, both together do not.
    let mut r = Raw::header(3, 1, 3);
    r.zeros(40);
    assert_reason(&r, 8, "1 tensors and 3 metadata entries cannot fit");
}

#[test]
fn huge_string_lengths() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).bytes(b"key").zeros(16);
    assert_reason(&r, 24, "the key of metadata entry 0 has length 18446744073709551615, but only 19 bytes are left");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(1 << 62).zeros(8);
    assert_reason(&r, 24 + 9 + 4, "the value of 'k' has length 4611686018427387904");
    let mut r = Raw::header(3, 1, 0);
    r.u64(1 << 50).zeros(40);
    assert_reason(&r, 24, "the name of tensor 0 has length");
}

#[test]
fn huge_array_counts() {
    for (ty, min) in [(0u32, 1), (6, 4), (8, 8), (9, 12), (10, 8)] {
        let mut r = Raw::header(3, 0, 1);
        r.str("arr").u32(9).u32(ty).u64(u64::MAX / 2).zeros(64);
        let (at, reason) = format_error(&r);
        assert_eq!(at, 24 + 11 + 4 + 4, "{reason}");
        assert!(reason.contains(&format!("each takes at least {min} bytes and 64 are left")), "{reason}");
    }
    // A count that fits the bytes for small elements but not the elements themselves.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(9).u32(8).u64(4).u64(1).bytes(b"a").u64(100).zeros(32);
    let (_, reason) = format_error(&r);
    assert!(reason.contains("element 1 of array 'arr' has length 100"), "{reason}");
}

#[test]
fn unknown_value_types_and_bad_values() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    assert_reason(&r, 33, "metadata 'k' has unknown value type id 13");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(77).u64(0);
    assert_reason(&r, 37, "array 'k' has unknown element type id 77");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(7).bytes(&[2]);
    assert_reason(&r, 37, "bool in 'k' has byte value 2, expected 0 or 1");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(7).u64(3).bytes(&[1, 0, 9]);
    assert_reason(&r, 51, "bool in 'k' has byte value 9");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(3).bytes(b"a\xffb");
    assert_reason(&r, 37 + 8 + 1, "the value of 'k' is not valid UTF-8");
    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(b"\xc3\x28").u32(4).u32(0);
    assert_reason(&r, 32, "the key of metadata entry 0 is not valid UTF-8");
}

#[test]
fn deep_nesting_is_capped() {
    // MAX_ARRAY_DEPTH levels open; one more is an error, even with the bytes for thousands.
    let build = |levels: usize| {
        let mut r = Raw::header(3, 0, 1);
        r.str("deep").u32(9);
        for _ in 1..levels {
            r.u32(9).u64(1);
        }
        r.u32(0).u64(0);
        r
    };
    assert!(GgufFile::from_bytes(build(MAX_ARRAY_DEPTH).0).is_ok());
    let r = build(MAX_ARRAY_DEPTH + 1);
    assert_reason(&r, 24 + 12 + 4 + 12 * MAX_ARRAY_DEPTH as u64, "nested deeper than 8 levels");
    let (_, reason) = format_error(&build(100_000));
    assert!(reason.contains("nested deeper"), "{reason}");
}

#[test]
fn duplicate_keys_and_names() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a.b", 1).kv_u32("a.b", 2);
    assert_reason(&r, 24 + 19, "metadata key 'a.b' appears twice (entries 0 and 1)");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("w", &[8], 0, 0).tensor("w", &[8], 0, 32).pad_to(32).zeros(64);
    assert_reason(&r, 24 + 33, "tensor name 'w' appears twice (tensors 0 and 1)");
}

#[test]
fn bad_dims() {
    assert_reason(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4), 33, "tensor 'w' has 5 dimensions; 1 to 4 are allowed");
    assert_reason(&one_tensor(&[], 0, 0, 4), 33, "has 0 dimensions");
    let mut r = Raw::header(3, 1, 0);
    r.str("w").u32(u32::MAX).zeros(64);
    assert_reason(&r, 33, "has 4294967295 dimensions");
    assert_reason(&one_tensor(&[4, 0], 0, 0, 16), 45, "dimension 1 of size 0");
    assert_reason(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 16), 45, "its dimensions overflow at dimension 1");
    assert_reason(&one_tensor(&[u64::MAX], 0, 0, 16), 37, "overflow at dimension 0");
    // Fits in u64 elements, overflows in bytes.
    assert_reason(&one_tensor(&[1 << 62], 0, 0, 16), 45, "the size of 4611686018427387904 F32 elements overflows");
    // A row that is not a whole number of blocks.
    assert_reason(&one_tensor(&[16, 2], 2, 0, 18), 53, "rows of 16 elements, not a multiple of the Q4_0 block size 32");
}

#[test]
fn unknown_and_removed_tensor_types() {
    assert_reason(&one_tensor(&[4], 31, 0, 16), 45, "ggml type id 31 (Q4_0_4_4) was removed");
    assert_reason(&one_tensor(&[4], 4, 0, 16), 45, "(Q4_2) was removed");
    assert_reason(&one_tensor(&[4], 1000, 0, 16), 45, "unknown ggml type id 1000");
}

#[test]
fn tensor_data_out_of_bounds() {
    // Offset past the end of the file; the error points at the tensor's offset field.
    assert_reason(
        &one_tensor(&[4], 0, 1 << 20, 16),
        49,
        "tensor 'w' data (16 bytes at data offset 64 + 1048576) lies past the end of the file",
    );
    // Data one byte short.
    assert_reason(&one_tensor(&[4], 0, 0, 15), 49, "lies past the end of the file (79 bytes)");
    // Offset + size overflows u64.
    assert_reason(&one_tensor(&[4], 0, u64::MAX - 31, 16), 49, "lies past the end");
    // A huge tensor in a tiny file.
    assert_reason(&one_tensor(&[1 << 40], 0, 0, 16), 49, "lies past the end");
}

#[test]
fn overlapping_tensor_data() {
    // Two Q4_1 tensors of 64 elements (40 bytes each) at data offsets 0 and 64: a valid file;
    // the error is at the data offset of the tensor that comes second in the data.
    let file = |first_type: u32, second_offset: u64| {
        let mut r = Raw::header(3, 2, 0);
        r.tensor("a", &[64], first_type, 0);
        let second_at = r.0.len() as u64 + 8 + 1 + 4 + 8 + 4;
        r.tensor("b", &[64], 3, second_offset).pad_to(32).zeros(512);
        (r, second_at)
    };
    let (ok, _) = file(3, 64);
    GgufFile::from_bytes(ok.0).unwrap();
    // The first one's type changed from Q4_1 to F32: 256 bytes, running into the second.
    let (r, b_offset_at) = file(0, 64);
    assert_reason(&r, b_offset_at, "the data of tensors 'a' (F32, bytes 0..256 of the data section) and 'b' (Q4_1, bytes 64..104) overlap");
    // Out of order in the header, the same overlap is found.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("late", &[64], 3, 32);
    r.tensor("early", &[64], 3, 0).pad_to(32).zeros(128);
    assert_reason(&r, 24 + 8 + 4 + 4 + 8 + 4, "'early' (Q4_1, bytes 0..40 of the data section) and 'late' (Q4_1, bytes 32..72) overlap");
    // Two tensors at the same offset.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("x", &[8], 0, 0).tensor("y", &[8], 0, 0).pad_to(32).zeros(64);
    let (_, reason) = format_error(&r);
    assert!(reason.contains("'x'") && reason.contains("'y'") && reason.contains("overlap"), "{reason}");
}

#[test]
fn misaligned_offsets() {
    assert_reason(&one_tensor(&[4], 0, 4, 32), 49, "tensor 'w' has data offset 4, not a multiple of the alignment 32");
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 64).tensor("w", &[4], 0, 32).pad_to(64).zeros(64);
    assert_reason(&r, 24 + 33 + 25, "not a multiple of the alignment 64");
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 3);
    assert_reason(&r, 24 + 29, "general.alignment is 3 (a u32); it must be a power of two");
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 0);
    assert_reason(&r, 24 + 29, "it must be a power of two");
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(5).u32(-32i32 as u32);
    assert_reason(&r, 24 + 29, "is -32 (an i32)");
}

#[test]
fn truncated_inside_every_field_kind() {
    // Cut a header with one of each part right after each field: every cut is an error.
    let mut r = Raw::header(3, 1, 2);
    r.kv_u32("a", 1).str("b").u32(9).u32(8).u64(1).str("xyz").tensor("w", &[4], 0, 0).pad_to(32).zeros(16);
    assert!(GgufFile::from_bytes(r.0.clone()).is_ok());
    for len in 0..r.0.len() {
        let (at, reason) = format_error(&Raw(r.0[..len].to_vec()));
        assert!(at <= len as u64, "cut at {len}: {reason} at {at}");
    }
}

// Regression inputs from fuzzing (see docs/fuzzing.md) follow.
