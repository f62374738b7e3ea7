//! The ingress's definition, shared by the template and whatever reads a
//! deployed ingress: the stage name and throttling, the request models and
//! mapping template, and the integration and gateway responses.
//!
//! `POST /invoices/{ingestion,reconciliation,authorization,posting}`, each
//! with:
//!
//! - the stage's request model from `bems-schema` (draft-04), fixed to the
//!   cell ([`model`]), and a request validator, so a malformed body, or one
//!   no rule of the cell would route, gets 400 before anything reaches the
//!   bus;
//! - an API key (usage plan with throttling sized for month-end: 1,000
//!   requests/s steady, bursts of 2,000, i.e. the 60,000 events per minute
//!   of the design with room to spare);
//! - an AWS integration calling EventBridge `PutEvents` with the body as the
//!   event's detail ([`request_template`]);
//! - integration responses that answer 2xx only when the bus took the
//!   event, and 429, 502 or 503 when it did not ([`INTEGRATION_RESPONSES`]);
//! - gateway responses that answer in JSON: 400 for a body the stage's
//!   model refuses, 403 without a valid key, 429 when throttled
//!   ([`GATEWAY_RESPONSES`]).
//!
//! Emulator differences, used only with `emulator: true` (the template's
//! emulator part, [`crate::emulator_template`]):
//! - LocalStack validates models with Python's `jsonschema`, whose float
//!   `multipleOf` refuses amounts such as `19.99` (19.99 / 0.01 is not an
//!   integer in binary floating point). The models deployed to LocalStack
//!   leave out the per-currency `multipleOf`; decimals are still checked by
//!   the Rust validator in the SDK and the processors.
//! - AWS's `$util.escapeJavaScript` escapes `'` as `\'`, which is not JSON,
//!   so the AWS template undoes it with `.replaceAll("\\'","'")`; LocalStack
//!   escapes JSON-correctly and has no `replaceAll` on that value.

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::Value;

/// The deployed stage name.
pub const STAGE_NAME: &str = "v1";

/// Steady requests per second the usage plan and stage allow.
pub const RATE_LIMIT: f64 = 1000.0;

/// Burst the usage plan and stage allow.
pub const BURST_LIMIT: i32 = 2000;

/// The model name of a stage: `InvoiceIngestionRequest`.
pub fn model_name(stage: Stage) -> String {
    let s = stage.as_str();
    format!("Invoice{}{}Request", s[..1].to_uppercase(), &s[1..])
}

/// The request mapping template: one `PutEvents` entry whose detail is the
/// body, as text.
pub fn request_template(spec: &CellSpec, emulator: bool) -> String {
    let detail = if emulator {
        "$util.escapeJavaScript($input.body)".to_owned()
    } else {
        r#"$util.escapeJavaScript($input.body).replaceAll("\\'","'")"#.to_owned()
    };
    format!(
        r#"{{"Entries":[{{"Source":"{}","DetailType":"{}","EventBusName":"{}","Detail":"{detail}"}}]}}"#,
        bems_core::envelope::EVENT_SOURCE,
        bems_core::envelope::DETAIL_TYPE,
        spec.bus_name()
    )
}

/// The gateway's own answers, in JSON: (response type, status, body).
///
/// Gateway response templates are not VTL: API Gateway substitutes
/// `$context` values as they are, with no escaping function, so a body
/// holds only values that stay valid JSON: `$context.error.messageString`
/// is the message already quoted (and API Gateway's messages hold no
/// quote). The detailed `$context.error.validationErrorString` quotes the
/// values it names, which would break the JSON, so the 400 body says where
/// to find every problem instead.
pub const GATEWAY_RESPONSES: &[(&str, &str, &str)] = &[
    (
        "BAD_REQUEST_BODY",
        "400",
        r#"{"message": $context.error.messageString, "hint": "the body is not a valid invoice event for this stage and cell (the stage's model is bems-schema's <stage>-request.v1.json, with metadata.partition at most the cell's partition count and metadata.cellId, region and accountId the cell's); bems_core::Validator, or `bems send`, lists every problem"}"#,
    ),
    (
        "MISSING_AUTHENTICATION_TOKEN",
        "403",
        r#"{"message": "no such endpoint, or no API key; send the key as x-api-key"}"#,
    ),
    ("INVALID_API_KEY", "403", r#"{"message": "the API key is not valid for this API"}"#),
    ("THROTTLED", "429", r#"{"message": "too many requests; retry with backoff"}"#),
    ("QUOTA_EXCEEDED", "429", r#"{"message": "the usage plan's quota is exhausted"}"#),
];

/// The statuses a method answers with: success, the gateway's own
/// refusals, and what the bus's answer is mapped to
/// ([`INTEGRATION_RESPONSES`]).
pub const METHOD_STATUSES: [&str; 7] = ["200", "400", "403", "429", "500", "502", "503"];

/// One integration response: which answers of the bus it takes (a regular
/// expression over the bus's HTTP status; `None`: every answer no other
/// takes), the method status it answers with unless the template overrides
/// it, and the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrationResponse {
    /// The `SelectionPattern`.
    pub selection_pattern: Option<&'static str>,
    /// The `StatusCode`.
    pub status: &'static str,
    /// The `application/json` response template.
    pub template: &'static str,
}

/// How the bus's answers become the API's. PutEvents answers 200 even when
/// it refuses the entry (`FailedEntryCount` 1 and the entry's `ErrorCode`),
/// and 4xx for a throttled or refused call (`__type` names the error), so
/// each template reads the answer and sets
/// `$context.responseOverride.status` once where the default status is
/// wrong: never 2xx for an event the bus did not take. Throttling becomes
/// 429 (retry with backoff), the bus's internal failures 503 (retry),
/// everything else 502 (the cell's configuration, not the producer's
/// event, is at fault: access denied, a missing bus). Every body is JSON:
/// the only value copied from the answer goes through `$input.json`, which
/// writes it as JSON.
pub const INTEGRATION_RESPONSES: [IntegrationResponse; 3] = [
    IntegrationResponse {
        selection_pattern: None,
        status: "200",
        template: r#"#set($failed = "$input.path('$.FailedEntryCount')")
#if($failed == "0")
{"failedEntryCount": 0, "entries": $input.json('$.Entries')}
#else
#set($code = "$input.path('$.Entries[0].ErrorCode')")
#if($code == "ThrottlingException")
#set($context.responseOverride.status = 429)
#elseif($code == "InternalFailure")
#set($context.responseOverride.status = 503)
#else
#set($context.responseOverride.status = 502)
#end
{"message": "the event bus did not take the event; it was not accepted", "errorCode": $input.json('$.Entries[0].ErrorCode')}
#end"#,
    },
    IntegrationResponse {
        selection_pattern: Some("4\\d{2}"),
        status: "502",
        template: r#"#set($type = $input.body)
#if($type.contains("ThrottlingException"))
#set($context.responseOverride.status = 429)
{"message": "the event bus is throttling; retry with backoff", "errorCode": "ThrottlingException"}
#elseif($type.contains("AccessDeniedException"))
{"message": "the ingress may not put events on the bus; the event was not accepted", "errorCode": "AccessDeniedException"}
#else
{"message": "the event bus refused the request; the event was not accepted", "errorCode": "BusRefused"}
#end"#,
    },
    IntegrationResponse {
        selection_pattern: Some("5\\d{2}"),
        status: "503",
        template: r#"{"message": "the event bus failed; retry", "errorCode": "BusUnavailable"}"#,
    },
];

/// The values a cell's request models fix: literal values, or
/// CloudFormation references (`{"Ref": "AWS::Region"}`) in the template.
#[derive(Debug, Clone)]
pub struct ModelCell {
    /// The cell id.
    pub cell_id: String,
    /// The partition count: `metadata.partition` is at most this.
    pub partitions: u8,
    /// The cell's Region, as a JSON value.
    pub region: Value,
    /// The cell's account, as a JSON value.
    pub account_id: Value,
}

impl From<&CellSpec> for ModelCell {
    fn from(spec: &CellSpec) -> ModelCell {
        ModelCell {
            cell_id: spec.cell_id().as_str().to_owned(),
            partitions: spec.partitions().get(),
            region: Value::String(spec.region().as_str().to_owned()),
            account_id: Value::String(spec.account_id().as_str().to_owned()),
        }
    }
}

/// Why a stage's request model could not be made: the committed schema is
/// not what the model builds on (a bug in `bems-schema`, caught by the
/// template tests).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `bems-schema` could not make the stage's request schema.
    #[error("the request schema of {stage}: {source}")]
    Schema {
        /// The stage.
        stage: Stage,
        /// What `bems-schema` said.
        #[source]
        source: bems_schema::SchemaError,
    },
    /// The request schema lacks a property the model fixes.
    #[error("the request schema of {stage} has no metadata property {field}")]
    Missing {
        /// The stage.
        stage: Stage,
        /// The property (`metadata` itself, or one of its members).
        field: &'static str,
    },
}

/// The model to deploy for a stage of `cell`: the committed `bems-schema`
/// request schema, plus what makes an event routable in this cell, so that
/// an event no rule of the cell would route is refused with 400 instead of
/// accepted and dropped: `metadata.partition` at most the cell's partition
/// count, and `cellId`, `region` and `accountId` the cell's own. (Whether
/// an in-range partition is the invoice's own takes a hash no model can
/// express; the consumers check it and dead-letter a wrong one with the
/// reason.) See the module docs for `emulator`.
pub fn model(cell: &ModelCell, stage: Stage, emulator: bool) -> Result<Value, ModelError> {
    let mut schema = bems_schema::request_schema(stage).map_err(|source| ModelError::Schema { stage, source })?;
    let metadata = schema
        .pointer_mut("/properties/metadata/properties")
        .and_then(Value::as_object_mut)
        .ok_or(ModelError::Missing { stage, field: "metadata" })?;
    let mut fix = |field: &'static str, keyword: &str, value: Value| -> Result<(), ModelError> {
        let property =
            metadata.get_mut(field).and_then(Value::as_object_mut).ok_or(ModelError::Missing { stage, field })?;
        property.insert(keyword.to_owned(), value);
        Ok(())
    };
    fix("partition", "maximum", Value::from(cell.partitions))?;
    fix("cellId", "enum", Value::Array(vec![Value::String(cell.cell_id.clone())]))?;
    fix("region", "enum", Value::Array(vec![cell.region.clone()]))?;
    fix("accountId", "enum", Value::Array(vec![cell.account_id.clone()]))?;
    if emulator && let Some(Value::Array(all_of)) = schema.get_mut("allOf") {
        // Drop the currency/decimals branch; keep the transition table.
        all_of.retain(|branch| !branch.to_string().contains("multipleOf"));
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bems_core::fields::{AccountId, CellId, Region};
    use bems_core::partition::PartitionCount;

    fn spec() -> CellSpec {
        CellSpec::new(
            CellId::new("c1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(2).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn templates_put_the_body_on_the_cells_bus() {
        let aws = request_template(&spec(), false);
        assert!(aws.contains(r#""EventBusName":"bems-c1""#) && aws.contains(r#"replaceAll("\\'","'")"#), "{aws}");
        assert!(!request_template(&spec(), true).contains("replaceAll"));
    }

    #[test]
    fn emulator_models_drop_only_the_decimal_rule() {
        let cell = ModelCell::from(&spec());
        let full = model(&cell, Stage::Posting, false).unwrap();
        let emulator = model(&cell, Stage::Posting, true).unwrap();
        assert!(full.to_string().contains("multipleOf"));
        assert!(!emulator.to_string().contains("multipleOf"));
        assert_eq!(emulator["allOf"].as_array().map(Vec::len), Some(1), "the transition branch stays");
        assert_eq!(model_name(Stage::Posting), "InvoicePostingRequest");
    }
}
