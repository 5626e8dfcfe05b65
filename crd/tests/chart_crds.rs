//! The Helm chart ships the CRDs generated from the Rust types; this test fails when the
//! checked-in copy (`charts/switchyard/crds/switchyard.yaml`) and the types disagree.

use std::path::Path;

const CHART_CRDS: &str = "../charts/switchyard/crds/switchyard.yaml";
const REGENERATE: &str = "cargo run -q -- crd > charts/switchyard/crds/switchyard.yaml";

#[test]
fn chart_crds_match_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRDS);
    let shipped = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nregenerate it from the repository root with:\n    {REGENERATE}",
            path.display()
        )
    });
    let generated = switchyard_crd::crds_yaml();
    if shipped == generated {
        return;
    }
    let first_difference = shipped
        .lines()
        .zip(generated.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| {
            format!(
                "first difference at line {}:\n  chart:     {a}\n  generated: {b}",
                i + 1
            )
        })
        .unwrap_or_else(|| {
            format!(
                "one is a prefix of the other (chart: {} lines, generated: {} lines)",
                shipped.lines().count(),
                generated.lines().count()
            )
        });
    panic!(
        "{} is stale: it differs from the CRDs generated from the switchyard-crd types.\n\
         {first_difference}\n\
         Regenerate it from the repository root with:\n    {REGENERATE}",
        path.display()
    );
}
