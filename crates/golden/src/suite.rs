//! The standard suite: every op × dtype, on awkward shapes (31/32/33, odd head counts,
//! a partly full last page, k = 1 and k = vocab) and on shapes of real LLMs
//! (SmolLM2, Qwen2.5, Llama 3, Gemma 3).

use ingot_core::OpKind;

/// One case of a suite: a name, an op and its generator flags.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub op: OpKind,
    pub flags: Vec<(String, String)>,
}

pub(crate) fn e(out: &mut Vec<Entry>, name: impl Into<String>, op: OpKind, flags: &[(&str, &str)], extra: &[(&str, String)]) {
    let mut f: Vec<(String, String)> = flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    f.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    out.push(Entry { name: name.into(), op, flags: f });
}

/// Names of the suites `golden gen --suite` knows.
pub const SUITES: &[&str] = &["standard", "quick"];

/// The entries of a named suite, or None.
pub fn suite(name: &str) -> Option<Vec<Entry>> {
    match name {
        "standard" => Some(standard()),
        "quick" => Some(quick()),
        _ => None,
    }
}

/// One small case per op (a smoke test).
pub fn quick() -> Vec<Entry> {
    OpKind::ALL.iter().map(|&op| Entry { name: "quick".into(), op, flags: vec![] }).collect()
}

/// The standard suite: each family's entries (`standard` in `cases/FAMILY.rs`).
pub fn standard() -> Vec<Entry> {
    let mut v = Vec::new();
    for family in crate::cases::STANDARD {
        family(&mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn standard_covers_every_op_and_names_are_unique() {
        let s = standard();
        let ops: BTreeSet<OpKind> = s.iter().map(|e| e.op).collect();
        assert_eq!(ops.len(), OpKind::ALL.len(), "an op has no standard case");
        let mut seen = BTreeSet::new();
        for e in &s {
            assert!(seen.insert((e.name.clone(), e.op)), "duplicate {} {}", e.name, e.op.name());
        }
    }
}
