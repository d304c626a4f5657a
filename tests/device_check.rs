//! `wasmbento check-device`'s comparison of a device with the CPU, run
//! here CPU against CPU on all-MiniLM-L6-v2 (a GPU run is
//! `scripts/gpu-check.sh`).
//!
//! Alone in its test binary: it loads the model twice and runs it flat out,
//! which would slow the timed tests beside it.

use wasmbento_tests::minilm_dir;

/// Both agree with sentence-transformers, the throughput table has both
/// batch sizes, and a reference that disagrees fails the check.
#[test]
fn the_device_check_compares_embeddings_and_measures_throughput() {
    use wasmbento::device_check::{Reference, run};
    let mut reference: Reference =
        serde_json::from_str(include_str!("fixtures/minilm-reference.json")).expect("the fixture parses");
    let cpu = wasmbento::devices::Device::Cpu;
    let quick = std::time::Duration::from_millis(50);
    let report = run(&minilm_dir(), cpu, Some(&reference), quick).unwrap();
    assert!(report.passed, "{report:?}");
    assert!(report.device_vs_cpu.min_cosine > 0.999_999, "{report:?}");
    for agreement in [&report.cpu_vs_reference, &report.device_vs_reference] {
        let a = agreement.as_ref().expect("compared with the reference");
        assert!(a.min_cosine >= 0.9999 && a.max_abs_diff <= 1e-4, "{a:?}");
    }
    let batches: Vec<usize> = report.throughput.iter().map(|t| t.batch).collect();
    assert_eq!(batches, [1, 32]);
    assert!(report.throughput.iter().all(|t| t.cpu_items_per_s > 0.0 && t.device_items_per_s > 0.0));
    assert!(wasmbento::device_check::render(&report).contains("PASS"));

    for v in &mut reference.cases[2].embedding {
        *v = -*v;
    }
    let report = run(&minilm_dir(), cpu, Some(&reference), quick).unwrap();
    assert!(!report.passed);
    assert!(report.device_vs_reference.unwrap().min_cosine < -0.99);
}
