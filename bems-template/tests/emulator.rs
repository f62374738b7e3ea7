//! The emulator cell (`emulator_template`, what `bems provision` deploys
//! on LocalStack) is the AWS template less what LocalStack cannot run: each
//! resource it keeps is `cell.json`'s (or a nested rules stack's, with the
//! main stack's arguments in place of its parameters) property for
//! property, except the documented emulator differences; and each resource
//! it leaves out is of a kind LocalStack cannot run.

use bems_core::Stage;
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::CellSpec;
use bems_template::{AWS_ONLY_TYPES, TemplateDefaults, cell_template, emulator_template, rules_file_name};
use serde_json::{Value, json};

fn spec() -> CellSpec {
    CellSpec::new(
        CellId::new("emu-1").expect("cell"),
        Region::new("us-east-1").expect("region"),
        AccountId::new("000000000000").expect("account"),
        PartitionCount::new(3).expect("partitions"),
    )
    .expect("spec")
}

fn pascal(stage: Stage) -> String {
    let s = stage.as_str();
    s[..1].to_uppercase() + &s[1..]
}

/// `value` with each `{"Ref": parameter}` replaced by its argument.
fn substituted(value: &Value, arguments: &[(&str, Value)]) -> Value {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("Ref")
                && let Some((_, argument)) = arguments.iter().find(|(n, _)| n == name)
            {
                return argument.clone();
            }
            Value::Object(map.iter().map(|(k, v)| (k.clone(), substituted(v, arguments))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substituted(v, arguments)).collect()),
        other => other.clone(),
    }
}

/// `resource` without the parts the emulator cell changes on purpose.
fn comparable(resource: &Value) -> Value {
    let mut r = resource.clone();
    if let Some(map) = r.as_object_mut() {
        // A test cell leaves nothing behind.
        map.remove("DeletionPolicy");
        map.remove("UpdateReplacePolicy");
    }
    match r["Type"].as_str() {
        // LocalStack's model validator and mapping templates (bems_template::api).
        Some("AWS::ApiGateway::Model") => r["Properties"]["Schema"] = json!("(emulator model)"),
        Some("AWS::ApiGateway::Method") => {
            r["Properties"]["Integration"]["RequestTemplates"] = json!("(emulator template)");
        }
        // No access logs (their log group is not deployed).
        Some("AWS::ApiGateway::Stage") => {
            if let Some(p) = r["Properties"].as_object_mut() {
                p.remove("AccessLogSetting");
            }
        }
        // The account's logging role is not set on LocalStack.
        Some("AWS::CloudFormation::WaitConditionHandle") => {
            if let Some(map) = r.as_object_mut() {
                map.remove("Metadata");
            }
        }
        _ => {}
    }
    r
}

#[test]
fn every_kept_resource_is_the_templates_and_every_dropped_one_cannot_run_on_localstack() {
    let spec = spec();
    let defaults = TemplateDefaults::default();
    let files = cell_template(&spec, &defaults);
    let main = files.file("cell.json").expect("cell.json");
    let emulator = emulator_template(&spec, &defaults);
    let kept = emulator["Resources"].as_object().expect("resources");

    // The rules of every stage, as the main stack instantiates them.
    let mut rules = serde_json::Map::new();
    for stage in Stage::ALL {
        let p = pascal(stage);
        let arguments = [
            ("BusName", json!({ "Ref": "Bus" })),
            ("RouteQueueArn", json!({ "Fn::GetAtt": [format!("{p}Route"), "Arn"] })),
            ("DeadLetterQueueArn", json!({ "Fn::GetAtt": ["BusDlq", "Arn"] })),
        ];
        let stack = files.file(&rules_file_name(stage)).expect("rules file");
        for (id, rule) in stack["Resources"].as_object().expect("rules") {
            rules.insert(id.clone(), substituted(rule, &arguments));
        }
    }

    let mut compared = 0;
    for (id, resource) in kept {
        let original = main["Resources"].get(id).or_else(|| rules.get(id));
        let original = original.unwrap_or_else(|| panic!("{id} is in neither cell.json nor a rules stack"));
        assert_eq!(comparable(resource), comparable(original), "{id} differs from the template's");
        compared += 1;
    }
    assert_eq!(rules.keys().filter(|id| kept.contains_key(*id)).count(), 4 * 3, "every stage rule is kept");

    // What is left out: what LocalStack cannot run, and what only that needs.
    for (id, resource) in main["Resources"].as_object().expect("resources") {
        if kept.contains_key(id) {
            continue;
        }
        let kind = resource["Type"].as_str().unwrap_or_default();
        let function_role = kind == "AWS::IAM::Role" && id.ends_with("Role") && id != "ApiRole";
        // A resource only a store makes (its condition reads `Store`, which
        // `bems provision` sets to none).
        let for_a_store = resource["Condition"]
            .as_str()
            .is_some_and(|c| main["Conditions"][c].to_string().contains(r#"{"Ref":"Store"}"#));
        assert!(
            AWS_ONLY_TYPES.contains(&kind) || function_role || for_a_store || id.starts_with("Alerts"),
            "{id} ({kind}) is left out of the emulator cell without a reason"
        );
    }
    assert!(compared > 80, "compared {compared} resources");
    assert!(
        kept.values().any(|r| r["Type"] == "AWS::KMS::Key"),
        "the cell key is deployed: every queue and topic uses it on LocalStack too"
    );
}
