//! The HTTP ingress (API Gateway, WAF, access logs).

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The ingress: `POST /invoices/<stage>` with the stage's draft-04 model and
/// a body validator, an API key and usage plan, the PutEvents integration
/// (through a role that may put events on this bus only), JSON gateway
/// responses, stage throttling, access logs (encrypted, kept
/// `LogRetentionDays`), X-Ray, and a WAF web ACL with AWS's common and
/// known-bad-inputs rule sets. The same tables as `bems provision`
/// ([`crate::api`]) so both deploy the same API.
pub(super) fn api(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    use crate::api::{
        BURST_LIMIT, BUS_ERROR_BODY, GATEWAY_RESPONSES, METHOD_STATUSES, RATE_LIMIT, RESPONSE_TEMPLATE, STAGE_NAME,
        model, model_name, request_template,
    };
    let cell = spec.cell_id().as_str();
    let api = reference("Api");
    resources.insert(
        "Api".into(),
        json!({
            "Type": "AWS::ApiGateway::RestApi",
            "Properties": {
                "Name": format!("bems-{cell}-ingress"),
                "Description": "BEMS ingress: POST /invoices/<stage> puts a validated invoice event on the cell's bus.",
                "EndpointConfiguration": { "Types": ["REGIONAL"] },
            },
        }),
    );
    resources.insert(
        "ApiRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "API Gateway puts events on this cell's bus, and nothing else.",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "apigateway.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    }],
                },
                "Policies": [{
                    "PolicyName": "put-events",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{ "Effect": "Allow", "Action": "events:PutEvents", "Resource": get_att("Bus", "Arn") }],
                    },
                }],
            },
        }),
    );
    resources.insert(
        "InvoicesResource".into(),
        json!({
            "Type": "AWS::ApiGateway::Resource",
            "Properties": { "RestApiId": api, "ParentId": get_att("Api", "RootResourceId"), "PathPart": "invoices" },
        }),
    );
    resources.insert(
        "BodyValidator".into(),
        json!({
            "Type": "AWS::ApiGateway::RequestValidator",
            "Properties": { "RestApiId": api, "Name": "body", "ValidateRequestBody": true, "ValidateRequestParameters": false },
        }),
    );
    let mut methods = Vec::new();
    for stage in Stage::ALL {
        let p = pascal(stage);
        // The generated schemas are fixed data; a failure is a bug in bems-schema.
        let schema = model(stage, false).unwrap_or_else(|e| unreachable!("the {stage} model generates: {e}"));
        resources.insert(
            format!("{p}Model"),
            json!({
                "Type": "AWS::ApiGateway::Model",
                "Properties": { "RestApiId": api, "Name": model_name(stage), "ContentType": "application/json", "Schema": schema },
            }),
        );
        resources.insert(
            format!("{p}Resource"),
            json!({
                "Type": "AWS::ApiGateway::Resource",
                "Properties": { "RestApiId": api, "ParentId": reference("InvoicesResource"), "PathPart": stage.as_str() },
            }),
        );
        methods.push(format!("{p}Method"));
        resources.insert(
            format!("{p}Method"),
            json!({
                "Type": "AWS::ApiGateway::Method",
                "Properties": {
                    "RestApiId": api,
                    "ResourceId": reference(&format!("{p}Resource")),
                    "HttpMethod": "POST",
                    "AuthorizationType": "NONE",
                    "ApiKeyRequired": true,
                    "RequestValidatorId": reference("BodyValidator"),
                    "RequestModels": { "application/json": reference(&format!("{p}Model")) },
                    "Integration": {
                        "Type": "AWS",
                        "IntegrationHttpMethod": "POST",
                        "Uri": sub("arn:${AWS::Partition}:apigateway:${AWS::Region}:events:action/PutEvents"),
                        "Credentials": get_att("ApiRole", "Arn"),
                        "RequestParameters": {
                            "integration.request.header.X-Amz-Target": "'AWSEvents.PutEvents'",
                            "integration.request.header.Content-Type": "'application/x-amz-json-1.1'",
                        },
                        "RequestTemplates": { "application/json": request_template(spec, false) },
                        "PassthroughBehavior": "NEVER",
                        "IntegrationResponses": [
                            { "StatusCode": "200", "ResponseTemplates": { "application/json": RESPONSE_TEMPLATE } },
                            {
                                "StatusCode": "500",
                                "SelectionPattern": "5\\d{2}",
                                "ResponseTemplates": { "application/json": BUS_ERROR_BODY },
                            },
                        ],
                    },
                    "MethodResponses": METHOD_STATUSES.iter().map(|s| json!({ "StatusCode": s })).collect::<Vec<_>>(),
                },
            }),
        );
    }
    for &(kind, status, body) in GATEWAY_RESPONSES {
        resources.insert(
            format!("GatewayResponse{}", kind.split('_').map(|w| capitalized(&w.to_lowercase())).collect::<String>()),
            json!({
                "Type": "AWS::ApiGateway::GatewayResponse",
                "Properties": {
                    "RestApiId": api,
                    "ResponseType": kind,
                    "StatusCode": status,
                    "ResponseTemplates": { "application/json": body },
                },
            }),
        );
    }
    // The deployment must follow every method; its logical id does not
    // change with them, so a method change needs `aws apigateway
    // create-deployment` (or a new id) to go live: a known CloudFormation
    // trait, written down in infra/README.md.
    resources.insert(
        "Deployment".into(),
        json!({ "Type": "AWS::ApiGateway::Deployment", "DependsOn": methods, "Properties": { "RestApiId": api } }),
    );
    resources.insert(
        "AccessLogs".into(),
        json!({
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": format!("/bems/{cell}/api-access"),
                "RetentionInDays": reference("LogRetentionDays"),
                "KmsKeyId": get_att("CellKey", "Arn"),
            },
        }),
    );
    resources.insert(
        "ApiGatewayLogsRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Condition": "WithApiGatewayAccount",
            "Properties": {
                "Description": "API Gateway writes this account's API logs to CloudWatch Logs.",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "apigateway.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                    }],
                },
                "ManagedPolicyArns": [sub("arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs")],
            },
        }),
    );
    resources.insert(
        "ApiGatewayAccount".into(),
        json!({
            "Type": "AWS::ApiGateway::Account",
            "Condition": "WithApiGatewayAccount",
            "Properties": { "CloudWatchRoleArn": get_att("ApiGatewayLogsRole", "Arn") },
        }),
    );
    resources.insert(
        "ApiStage".into(),
        json!({
            "Type": "AWS::ApiGateway::Stage",
            "Metadata": {
                "checkov": { "skip": [{
                    "id": "CKV_AWS_120",
                    "comment": "Every request is a distinct event to put on the bus: a cached answer would drop events.",
                }] },
            },
            "Properties": {
                "RestApiId": api,
                "StageName": STAGE_NAME,
                "DeploymentId": reference("Deployment"),
                "TracingEnabled": true,
                "MethodSettings": [{
                    "ResourcePath": "/*",
                    "HttpMethod": "*",
                    "ThrottlingRateLimit": RATE_LIMIT,
                    "ThrottlingBurstLimit": BURST_LIMIT,
                    "MetricsEnabled": true,
                    // Execution logs of failures only: the access logs
                    // record every request.
                    "LoggingLevel": "ERROR",
                    "DataTraceEnabled": false,
                }],
                "AccessLogSetting": {
                    "DestinationArn": get_att("AccessLogs", "Arn"),
                    "Format": r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","apiKeyId":"$context.identity.apiKeyId","time":"$context.requestTimeEpoch","path":"$context.path","status":"$context.status","error":"$context.error.messageString","validation":"$context.error.validationErrorString","integrationStatus":"$context.integration.status","latencyMs":"$context.responseLatency"}"#,
                },
            },
        }),
    );
    resources.insert(
        "ProducersKey".into(),
        json!({
            "Type": "AWS::ApiGateway::ApiKey",
            "DependsOn": ["ApiStage"],
            "Properties": { "Name": format!("bems-{cell}-producers"), "Enabled": true },
        }),
    );
    resources.insert(
        "UsagePlan".into(),
        json!({
            "Type": "AWS::ApiGateway::UsagePlan",
            "DependsOn": ["ApiStage"],
            "Properties": {
                "UsagePlanName": format!("bems-{cell}-producers"),
                "ApiStages": [{ "ApiId": api, "Stage": STAGE_NAME }],
                "Throttle": { "RateLimit": RATE_LIMIT, "BurstLimit": BURST_LIMIT },
            },
        }),
    );
    resources.insert(
        "UsagePlanKey".into(),
        json!({
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": { "KeyId": reference("ProducersKey"), "KeyType": "API_KEY", "UsagePlanId": reference("UsagePlan") },
        }),
    );
    let managed = |priority: u32, name: &str| {
        json!({
            "Name": name,
            "Priority": priority,
            "OverrideAction": { "None": {} },
            "Statement": { "ManagedRuleGroupStatement": { "VendorName": "AWS", "Name": name } },
            "VisibilityConfig": { "SampledRequestsEnabled": true, "CloudWatchMetricsEnabled": true, "MetricName": name },
        })
    };
    resources.insert(
        "WebAcl".into(),
        json!({
            "Type": "AWS::WAFv2::WebACL",
            "Properties": {
                "Name": format!("bems-{cell}-ingress"),
                "Scope": "REGIONAL",
                "DefaultAction": { "Allow": {} },
                "Rules": [
                    managed(0, "AWSManagedRulesCommonRuleSet"),
                    managed(1, "AWSManagedRulesKnownBadInputsRuleSet"),
                ],
                "VisibilityConfig": {
                    "SampledRequestsEnabled": true,
                    "CloudWatchMetricsEnabled": true,
                    "MetricName": format!("bems-{cell}-ingress"),
                },
            },
        }),
    );
    resources.insert(
        "WebAclAssociation".into(),
        json!({
            "Type": "AWS::WAFv2::WebACLAssociation",
            "Properties": {
                "ResourceArn": sub(&format!("arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}::/restapis/${{Api}}/stages/{STAGE_NAME}")),
                "WebACLArn": get_att("WebAcl", "Arn"),
            },
            "DependsOn": ["ApiStage"],
        }),
    );
    outputs.insert(
        "ApiUrl".into(),
        json!({ "Value": sub(&format!("https://${{Api}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{STAGE_NAME}")) }),
    );
    outputs.insert("ApiId".into(), json!({ "Value": api }));
    outputs.insert("ProducersKeyId".into(), json!({ "Value": reference("ProducersKey") }));
}
