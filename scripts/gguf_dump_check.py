#!/usr/bin/env python3
"""Cross-check Ingot's GGUF reader against the PyPI `gguf` package (gguf.GGUFReader).

For each test model in $INGOT_MODELS (default ~/.cache/ingot/models; fetched by
scripts/fetch_models.sh), run `ingot info --json --full-arrays FILE` and compare with
GGUFReader: the version, every metadata key (in file order) with its type and value (arrays
element by element, tokenizer vocabularies included), and every tensor's name, type,
shape (ggml order), element count, data offset and byte size.

A missing model is reported and skipped; with INGOT_REQUIRE_MODELS=1 it is a failure.
Usage: python3 scripts/gguf_dump_check.py [--ingot target/release/ingot] [MODEL.gguf ...]
"""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
]

# GGUFValueType name -> the name `ingot info --json` uses.
TYPE_NAMES = {
    "UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
    "UINT64": "u64", "INT64": "i64", "FLOAT32": "f32", "FLOAT64": "f64", "BOOL": "bool",
    "STRING": "string", "ARRAY": "array",
}


def same_value(a, b):
    """JSON value from ingot vs Python value from gguf; floats exactly, non-finite as null."""
    if isinstance(b, float) and not math.isfinite(b):
        return a is None
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(b, bool) or isinstance(a, bool):
        return bool(a) == bool(b) and isinstance(a, bool)
    return a == b


def check_model(path: Path, ingot: str) -> list[str]:
    import gguf  # imported here so a missing package is reported as such

    errors: list[str] = []
    out = subprocess.run([ingot, "info", "--json", "--full-arrays", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        return [f"ingot info failed ({out.returncode}): {out.stderr.strip()}"]
    ours = json.loads(out.stdout)
    r = gguf.GGUFReader(str(path))

    def err(msg):
        if len(errors) < 50:
            errors.append(msg)

    version = r.fields["GGUF.version"].contents()
    if ours["version"] != version:
        err(f"version: ingot {ours['version']}, gguf {version}")

    theirs = [(k, f) for k, f in r.fields.items() if not k.startswith("GGUF.")]
    our_keys = [m["key"] for m in ours["metadata"]]
    their_keys = [k for k, _ in theirs]
    if our_keys != their_keys:
        err(f"metadata keys differ: only ingot {sorted(set(our_keys) - set(their_keys))}, "
            f"only gguf {sorted(set(their_keys) - set(our_keys))}, same set in another order: {set(our_keys) == set(their_keys)}")
    ours_by_key = {m["key"]: m for m in ours["metadata"]}
    n_values = 0
    for key, field in theirs:
        m = ours_by_key.get(key)
        if m is None:
            continue
        types = [TYPE_NAMES[t.name] for t in field.types]
        if m["type"] != types[0]:
            err(f"{key}: type ingot {m['type']}, gguf {types[0]}")
            continue
        if types[0] == "array":
            if len(types) > 2:
                # gguf-py does not decode arrays of arrays; compare the outer length only.
                if m["length"] != len(field.data):
                    err(f"{key}: nested array length ingot {m['length']}, gguf {len(field.data)}")
                continue
            if m["element_type"] != types[-1]:
                err(f"{key}: element type ingot {m['element_type']}, gguf {types[-1]}")
            if m["length"] != len(field.data):
                err(f"{key}: length ingot {m['length']}, gguf {len(field.data)}")
            theirs_v = field.contents()
            if not same_value(m["value"], theirs_v):
                first = next((i for i, (a, b) in enumerate(zip(m["value"], theirs_v)) if not same_value(a, b)), None)
                err(f"{key}: array values differ (first at index {first})")
            n_values += len(theirs_v)
        else:
            theirs_v = field.contents()
            if not same_value(m["value"], theirs_v):
                err(f"{key}: value ingot {m['value']!r}, gguf {theirs_v!r}")
            n_values += 1

    if len(ours["tensors"]) != len(r.tensors):
        err(f"tensor count: ingot {len(ours['tensors'])}, gguf {len(r.tensors)}")
    for a, b in zip(ours["tensors"], r.tensors):
        want = {
            "name": b.name, "type": b.tensor_type.name, "shape": [int(d) for d in b.shape],
            "elements": int(b.n_elements), "file_offset": int(b.data_offset), "bytes": int(b.n_bytes),
        }
        got = {k: a[k] for k in want}
        if got != want:
            err(f"tensor {b.name}: ingot {got}, gguf {want}")
    if ours["data_offset"] != min((int(t.data_offset) for t in r.tensors), default=ours["data_offset"]):
        err(f"data offset: ingot {ours['data_offset']}, first tensor at {min(int(t.data_offset) for t in r.tensors)}")
    print(f"  {len(theirs)} metadata keys ({n_values} values), {len(r.tensors)} tensors compared")
    return errors


def default_ingot() -> str:
    built = [p for p in (Path("target/release/ingot"), Path("target/debug/ingot")) if p.exists()]
    return str(max(built, key=lambda p: p.stat().st_mtime)) if built else "target/release/ingot"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingot", default=default_ingot(), help="the ingot binary (default: the newer of target/release/ingot and target/debug/ingot)")
    ap.add_argument("models", nargs="*", help="GGUF files (default: the three test models)")
    args = ap.parse_args()
    if not Path(args.ingot).exists():
        print(f"gguf_dump_check: {args.ingot} not found; build it with `cargo build --release -p ingot-cli`", file=sys.stderr)
        return 1
    try:
        import gguf  # noqa: F401
    except ImportError:
        print("gguf_dump_check: the `gguf` Python package is missing (pip install -r scripts/requirements.txt)", file=sys.stderr)
        return 1

    require = os.environ.get("INGOT_REQUIRE_MODELS") == "1"
    models_dir = Path(os.environ.get("INGOT_MODELS", Path.home() / ".cache/ingot/models"))
    paths = [Path(m) for m in args.models] or [models_dir / m for m in MODELS]
    failed = checked = 0
    for p in paths:
        if not p.is_file():
            print(f"gguf_dump_check: SKIPPED {p}: missing (run scripts/fetch_models.sh)", file=sys.stderr)
            failed += require
            continue
        print(f"{p.name}:")
        errors = check_model(p, args.ingot)
        checked += 1
        for e in errors:
            print(f"  MISMATCH {e}")
        failed += bool(errors)
    print(f"gguf_dump_check: {checked} models checked, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
