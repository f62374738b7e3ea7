//! The Timestream database and table.

use std::collections::BTreeMap;

use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The Timestream database and table (condition `WithTimestream`):
/// retention from the parameters, magnetic store writes on so that late
/// corrections beyond the memory window are still stored.
pub(super) fn timestream(
    spec: &CellSpec,
    resources: &mut BTreeMap<String, Value>,
    outputs: &mut BTreeMap<String, Value>,
) {
    let database = spec.timestream_database();
    resources.insert(
        "TimestreamDatabase".into(),
        json!({
            "Type": "AWS::Timestream::Database",
            "Condition": "WithTimestream",
            "Metadata": maintenance_mode_note(),
            "Properties": { "DatabaseName": database, "KmsKeyId": reference("CellKey") },
        }),
    );
    resources.insert(
        "TimestreamTable".into(),
        json!({
            "Type": "AWS::Timestream::Table",
            "Condition": "WithTimestream",
            "Metadata": maintenance_mode_note(),
            "Properties": {
                "DatabaseName": reference("TimestreamDatabase"),
                "TableName": bems_core::contract::TIMESTREAM_TABLE,
                "RetentionProperties": {
                    "MemoryStoreRetentionPeriodInHours": sub("${MemoryRetentionHours}"),
                    "MagneticStoreRetentionPeriodInDays": sub("${MagneticRetentionDays}"),
                },
                "MagneticStoreWriteProperties": { "EnableMagneticStoreWrites": true },
            },
        }),
    );
    outputs.insert(
        "TimestreamDatabase".into(),
        json!({ "Condition": "WithTimestream", "Value": reference("TimestreamDatabase") }),
    );
}

/// Accepts cfn-lint's warning that Timestream for LiveAnalytics is in
/// maintenance mode: accounts that have it keep using it, the others set
/// `Store=none` (or, with the PostgreSQL store, that store).
pub(super) fn maintenance_mode_note() -> Value {
    json!({ "cfn-lint": { "config": { "ignore_checks": ["W3697"] } } })
}
