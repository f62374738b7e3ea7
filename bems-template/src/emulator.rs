//! The part of the template LocalStack can deploy: the emulator cell.

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::Value;

use super::*;

/// The resource types of `cell.json` the emulator cell leaves out:
/// LocalStack cannot run them (functions: no Docker; Timestream, RDS, WAF,
/// the archive: no provider), or they only serve what it cannot run
/// (alarms, dashboard, logs, the database's network and the writer's CA
/// layer, the nested stacks whose rules it takes inline, the account's API
/// Gateway logging role). The local cell's store is a PostgreSQL server of
/// its own (`scripts/postgres`).
pub const AWS_ONLY_TYPES: &[&str] = &[
    "AWS::Serverless::Function",
    "AWS::Serverless::LayerVersion",
    "AWS::RDS::DBCluster",
    "AWS::RDS::DBInstance",
    "AWS::RDS::DBSubnetGroup",
    "AWS::RDS::DBClusterParameterGroup",
    "AWS::EC2::VPC",
    "AWS::EC2::Subnet",
    "AWS::EC2::VPCEndpoint",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::SecurityGroupIngress",
    "AWS::Logs::LogGroup",
    "AWS::Timestream::Database",
    "AWS::Timestream::Table",
    "AWS::WAFv2::WebACL",
    "AWS::WAFv2::WebACLAssociation",
    "AWS::Events::Archive",
    "AWS::CloudWatch::Alarm",
    "AWS::CloudWatch::CompositeAlarm",
    "AWS::CloudWatch::Dashboard",
    "AWS::CloudFormation::Stack",
    "AWS::ApiGateway::Account",
];

/// The part of the cell LocalStack can deploy, as one template: what
/// `bems provision` deploys, so what the end-to-end tests and the local
/// cell run. It is the AWS `cell.json` less what LocalStack lacks or cannot
/// run (functions: no Docker; Timestream, WAF, the archive: no provider;
/// alarms, dashboard, access logs: not needed to route an event), with the
/// rules inline (LocalStack has no 500-resource limit, and nested stacks
/// would need their files in S3), the API's emulator models and request
/// template ([`crate::api`]), and no `Retain` policies (a test cell leaves
/// nothing behind). Every resource it keeps is `cell.json`'s, property for
/// property (`tests/emulator.rs` checks it). The functions run outside
/// LocalStack (the tests and the local cell run them in-process).
pub fn emulator_template(spec: &CellSpec, defaults: &TemplateDefaults) -> Value {
    let mut template = main_stack(spec, defaults);
    let Some(root) = template.as_object_mut() else { return template };
    root.remove("Transform");
    // Its parameters are given by `bems provision` (Store=none): every
    // store resource is left out below.
    root.remove("Rules");
    if let Some(Value::Object(resources)) = root.get_mut("Resources") {
        let dropped = AWS_ONLY_TYPES;
        let function_role = |r: &Value| {
            r["Type"] == "AWS::IAM::Role"
                && r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"]
                    == "lambda.amazonaws.com"
        };
        // What exists only with a store (`bems provision` gives
        // Store=none, so LocalStack would create none of it).
        let store_conditions = crate::database::conditions();
        let for_a_store = |r: &Value| r["Condition"].as_str().is_some_and(|c| store_conditions.get(c).is_some());
        resources.retain(|id, r| {
            !dropped.iter().any(|t| r["Type"] == *t)
                && !function_role(r)
                && !for_a_store(r)
                && !id.starts_with("Alerts")
                && id != "ApiGatewayLogsRole"
        });
        for resource in resources.values_mut() {
            if let Some(resource) = resource.as_object_mut() {
                resource.remove("DeletionPolicy");
                resource.remove("UpdateReplacePolicy");
            }
        }
        // The account's logging role is not set on LocalStack (nor needed:
        // its stages do not log), so the stage waits for nothing.
        if let Some(handle) = resources.get_mut("ApiGatewayAccountReady") {
            handle["Metadata"] = serde_json::json!({});
        }
        if let Some(stage) = resources.get_mut("ApiStage").and_then(|r| r["Properties"].as_object_mut()) {
            stage.remove("AccessLogSetting");
        }
        for stage in Stage::ALL {
            let p = pascal(stage);
            if let Ok(schema) = crate::api::model(&model_cell(spec), stage, true) {
                resources[&format!("{p}Model")]["Properties"]["Schema"] = schema;
            }
            resources[&format!("{p}Method")]["Properties"]["Integration"]["RequestTemplates"]["application/json"] =
                Value::String(crate::api::request_template(spec, true));
            // The stage's nested rules stack, inline, its parameters
            // replaced by what the main stack passes it.
            let arguments = [
                ("BusName", reference("Bus")),
                ("RouteQueueArn", get_att(&format!("{p}Route"), "Arn")),
                ("DeadLetterQueueArn", get_att("BusDlq", "Arn")),
            ];
            if let Value::Object(rules) = &rules_stack(spec, stage)["Resources"] {
                for (id, rule) in rules {
                    let mut rule = rule.clone();
                    substitute(&mut rule, &arguments);
                    resources.insert(id.clone(), rule);
                }
            }
        }
    }
    if let Some(Value::Object(outputs)) = root.get_mut("Outputs") {
        outputs.retain(|id, o| !id.starts_with("Alerts") && o.get("Condition").is_none());
    }
    template
}

/// Replaces each `{"Ref": name}` in `value` by its argument.
fn substitute(value: &mut Value, arguments: &[(&str, Value)]) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("Ref")
                && let Some((_, argument)) = arguments.iter().find(|(n, _)| n == name)
            {
                *value = argument.clone();
                return;
            }
            map.values_mut().for_each(|v| substitute(v, arguments));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, arguments)),
        _ => {}
    }
}
