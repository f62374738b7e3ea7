//! The part of the template LocalStack can deploy.

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The part of the cell LocalStack can deploy, as one template, for the
/// end-to-end test of the template itself: the AWS `cell.json` less what
/// LocalStack lacks or cannot run (functions: no Docker; Timestream, WAF,
/// the archive: no provider; alarms, dashboard, access logs: not needed to
/// route an event), with the rules inline (LocalStack has no 500-resource
/// limit) and delivering through the emulator shim's SQS FIFO queues
/// (LocalStack cannot deliver to an SNS FIFO topic; see
/// [`crate::shim`]), and the API's emulator models and request template
/// ([`crate::api`]).
pub fn localstack_template(spec: &CellSpec, defaults: &TemplateDefaults) -> Value {
    let mut template = main_stack(spec, defaults);
    let Some(root) = template.as_object_mut() else { return template };
    root.remove("Transform");
    if let Some(Value::Object(resources)) = root.get_mut("Resources") {
        let dropped = [
            "AWS::Serverless::Function",
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
        resources.retain(|id, r| {
            !dropped.iter().any(|t| r["Type"] == *t) && !id.starts_with("Alerts") && id != "ApiGatewayLogsRole"
        });
        if let Some(stage) = resources.get_mut("ApiStage").and_then(|r| r["Properties"].as_object_mut()) {
            stage.remove("AccessLogSetting");
        }
        for stage in Stage::ALL {
            let p = pascal(stage);
            if let Ok(schema) = crate::api::model(stage, true) {
                resources[&format!("{p}Model")]["Properties"]["Schema"] = schema;
            }
            resources[&format!("{p}Method")]["Properties"]["Integration"]["RequestTemplates"]["application/json"] =
                Value::String(crate::api::request_template(spec, true));
            let shim = format!("{p}Shim");
            resources.insert(
                shim.clone(),
                json!({
                    "Type": "AWS::SQS::Queue",
                    "Properties": {
                        "QueueName": crate::provision::shim_queue_name(spec, stage),
                        "FifoQueue": true,
                        "ContentBasedDeduplication": true,
                    },
                }),
            );
            for rule in spec.stage_rules().into_iter().filter(|r| r.stage == stage) {
                resources.insert(
                    format!("Rule{p}P{:02}", rule.partition.get()),
                    json!({
                        "Type": "AWS::Events::Rule",
                        "Properties": {
                            "Name": rule.name,
                            "EventBusName": reference("Bus"),
                            "EventPattern": rule.pattern.to_value(),
                            "State": "ENABLED",
                            "Targets": [{
                                "Id": "shim",
                                "Arn": get_att(&shim, "Arn"),
                                "SqsParameters": { "MessageGroupId": rule.message_group_id },
                                "DeadLetterConfig": { "Arn": get_att("BusDlq", "Arn") },
                            }],
                        },
                    }),
                );
            }
        }
    }
    if let Some(Value::Object(outputs)) = root.get_mut("Outputs") {
        outputs.retain(|id, _| !id.starts_with("Alerts") && id != "TimestreamDatabase");
    }
    template
}
