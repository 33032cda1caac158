//! Helpers shared by the model tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A model file of the cache (`INGOT_MODELS`, else ~/.cache/ingot/models), or `None` with a
/// SKIP line when it is absent; a panic instead when INGOT_REQUIRE_MODELS=1.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("INGOT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
    let p = dir.join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("INGOT_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} is missing and INGOT_REQUIRE_MODELS=1 (run scripts/fetch_models.sh)", p.display());
    }
    eprintln!("SKIP: {} not found (run scripts/fetch_models.sh); this test checks nothing", p.display());
    None
}
