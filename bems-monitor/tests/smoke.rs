//! `bems smoke` against the local cell run without one stage's processor
//! (`--without-processor reconciliation`): the invoice is routed, ingested
//! and stored, then stops; the report names the stage and shows the
//! invoice waiting in that stage's queue. (That it passes against a whole
//! cell is checked in `dashboard.rs`, on the cell that test runs.)

mod common;

use std::time::Duration;

use common::LocalCell;

#[test]
fn smoke_reports_the_stage_whose_processor_is_stopped() {
    let Some((localstack, moto)) = common::emulators() else { return };
    let Some(store) = common::postgres() else { return };
    let cell = common::fresh_cell("sm");
    let mut child = LocalCell::start(
        &localstack,
        &moto,
        &["--cell", &cell, "--partitions", "2", "--duration", "40", "--port", "0", "--scale", "0.005"]
            .into_iter()
            .chain(["--without-processor", "reconciliation", "--drain-secs", "5"])
            .collect::<Vec<_>>(),
    );
    let (api, key) = child.ingress();
    child.after("running without the reconciliation processor", Duration::from_secs(10));
    // 8 s per step, well inside the cell's 40 s: its queues still exist
    // when the report reads their depths.
    let report = common::smoke_within(&localstack, &store, &cell, &api, &key, Duration::from_secs(8));
    let stopped =
        report.stopped.as_ref().unwrap_or_else(|| panic!("passed without a reconciliation processor: {report:#?}"));
    assert_eq!(stopped.at, "reconciliation", "{report:#?}");
    assert!(stopped.reason.contains("reconciliation processor"), "{}", stopped.reason);
    let seen: Vec<&str> =
        report.checkpoints.iter().filter(|c| c.seen_after_ms.is_some()).map(|c| c.name.as_str()).collect();
    assert_eq!(seen, ["routing", "ingestion"], "{report:#?}");
    let queue = common::spec(&cell).queue_name(bems_core::Stage::Reconciliation);
    let depth = stopped.queues.iter().find(|q| q.queue == queue).unwrap_or_else(|| panic!("{queue}: {stopped:#?}"));
    assert!(depth.waiting + depth.in_flight >= 1, "the invoice waits in {queue}: {depth:?}");
    let (success, rest) = child.finish();
    assert!(success, "bems-monitor failed: {rest:?}");
    assert!(rest.iter().any(|l| l == &format!("bems-monitor: cell {cell} deleted")), "the cell was deleted: {rest:?}");
}
