//! The standard suite on the CPU device (the fast kernels models run), as
//! `ingot golden check --backend cpu` runs it: outputs between sentinels, each compared
//! with the tolerance of the path the device takes.

use ingot_core::{Backend, Precision};
use ingot_golden::{compare, generate, suite, Flags};

#[test]
fn standard_suite_passes_on_the_cpu_device() {
    let dev = ingot_cpu::CpuDevice;
    let (mut fast, mut q8, mut failures) = (0, 0, Vec::new());
    for e in suite::standard() {
        let case = generate(e.op, &Flags::new(e.flags.clone()).unwrap(), 42, &e.name).unwrap();
        let path = dev.precision(&case.op);
        fast += ingot_cpu::device_ops::fast_kernel(&case.op) as usize;
        q8 += (path == Precision::Q8Activations) as usize;
        let got = match dev.run_guarded(&case.op, &case.inputs) {
            Ok(g) => g,
            Err(err) => {
                failures.push(format!("{}/{}: {err}", e.name, e.op.name()));
                continue;
            }
        };
        for (name, want) in &case.outputs {
            let tol = case.tolerance_for(name, path).expect("every output has a tolerance");
            let v = compare(tol, want, &got[name]);
            if !v.pass {
                failures.push(format!("{}/{} {name}: {}", e.name, e.op.name(), v.detail));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // The suite reaches the fast kernels, the 8-bit activation path among them.
    assert!(fast >= 100 && q8 >= 20, "{fast} cases on fast kernels, {q8} on 8-bit activations");
}
