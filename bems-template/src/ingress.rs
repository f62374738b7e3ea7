//! The HTTP ingress (API Gateway, WAF, access logs).

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The ingress: `POST /invoices/<stage>` with the stage's draft-04 model
/// (fixed to this cell: [`crate::api::model`]) and a body validator, an
/// API key and usage plan, the PutEvents integration (through a role that
/// may put events on this bus only) whose responses never answer 2xx for an
/// event the bus did not take ([`crate::api::INTEGRATION_RESPONSES`]), JSON
/// gateway responses, stage throttling, access logs (encrypted, kept
/// `LogRetentionDays`, retained), X-Ray, and a WAF web ACL with AWS's
/// common and known-bad-inputs rule sets, the common rules that would
/// refuse legitimate producers set to count. The same tables as `bems
/// provision` ([`crate::api`]) so both deploy the same API.
pub(super) fn api(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    use crate::api::{
        BURST_LIMIT, GATEWAY_RESPONSES, INTEGRATION_RESPONSES, METHOD_STATUSES, RATE_LIMIT, STAGE_NAME, model,
        model_name, request_template,
    };
    let cell = spec.cell_id().as_str();
    let api = reference("Api");
    resources.insert(
        "Api".into(),
        json!({
            "Type": "AWS::ApiGateway::RestApi",
            "Properties": {
                "Name": spec.api_name(),
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
                        // No aws:SourceAccount condition: API Gateway does not
                        // send it when it assumes an integration's
                        // credentials role, so AssumeRole would be denied and
                        // every request answer 500 (reported from a live stack:
                        // aws-solutions-library-samples/accelerated-intelligent-
                        // document-processing-on-aws, pull request 479). Every
                        // trust policy in API Gateway's developer guide for such
                        // a role is this unconditioned statement
                        // (integrating-api-with-aws-services-s3.html,
                        // getting-started-aws-proxy.html). Only a principal that
                        // may iam:PassRole this role can attach it to an API.
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
    let mut published = Vec::new();
    let model_cell = model_cell(spec);
    for stage in Stage::ALL {
        let p = pascal(stage);
        // The generated schemas are fixed data; a failure is a bug in bems-schema.
        let schema =
            model(&model_cell, stage, false).unwrap_or_else(|e| unreachable!("the {stage} model generates: {e}"));
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
        published.push(format!("{p}Method"));
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
                        "IntegrationResponses": INTEGRATION_RESPONSES.iter().map(|r| {
                            let mut response = json!({
                                "StatusCode": r.status,
                                "ResponseTemplates": { "application/json": r.template },
                            });
                            if let Some(pattern) = r.selection_pattern {
                                response["SelectionPattern"] = json!(pattern);
                            }
                            response
                        }).collect::<Vec<_>>(),
                    },
                    "MethodResponses": METHOD_STATUSES.iter().map(|s| json!({ "StatusCode": s })).collect::<Vec<_>>(),
                },
            }),
        );
    }
    for &(kind, status, body) in GATEWAY_RESPONSES {
        let id =
            format!("GatewayResponse{}", kind.split('_').map(|w| capitalized(&w.to_lowercase())).collect::<String>());
        published.push(id.clone());
        resources.insert(
            id,
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
    // A deployment is a snapshot of the API: CloudFormation makes a new one
    // only for a new logical id, so the id carries a hash of everything the
    // snapshot holds (as SAM names `AWS::Serverless::Api` deployments), and
    // every change to a model, method or gateway response is served after
    // `sam deploy` without a manual `create-deployment`.
    let deployment = deployment_id(resources);
    resources.insert(
        deployment.clone(),
        json!({
            "Type": "AWS::ApiGateway::Deployment",
            "DependsOn": published,
            "Properties": {
                "RestApiId": api,
                "Description": format!("BEMS ingress, API definition {}", &deployment["Deployment".len()..]),
            },
        }),
    );
    // A stage that logs needs the account's CloudWatch Logs role first
    // (API Gateway refuses it otherwise: aws-cdk issue 10722). When this
    // stack sets the role, the stage waits for it (a DependsOn cannot name
    // a resource whose condition is false, hence the handle).
    resources.insert(
        "ApiGatewayAccountReady".into(),
        json!({
            "Type": "AWS::CloudFormation::WaitConditionHandle",
            "Metadata": { "Account": { "Fn::If": ["WithApiGatewayAccount", reference("ApiGatewayAccount"), ""] } },
        }),
    );
    resources.insert(
        "AccessLogs".into(),
        retained(json!({
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": format!("/bems/{cell}/api-access"),
                "RetentionInDays": reference("LogRetentionDays"),
                "KmsKeyId": get_att("CellKey", "Arn"),
            },
        })),
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
            "DependsOn": ["ApiGatewayAccountReady"],
            "Metadata": {
                "checkov": { "skip": [{
                    "id": "CKV_AWS_120",
                    "comment": "Every request is a distinct event to put on the bus: a cached answer would drop events.",
                }] },
            },
            "Properties": {
                "RestApiId": api,
                "StageName": STAGE_NAME,
                "DeploymentId": reference(&deployment),
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
                    // JSON lines. Access logs substitute values without
                    // escaping: `$context.error.message` is API Gateway's
                    // own text (no quotes); the validation message quotes
                    // the values it names, so it is left out (see
                    // `crate::api::GATEWAY_RESPONSES`).
                    "Format": r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","apiKeyId":"$context.identity.apiKeyId","time":"$context.requestTimeEpoch","path":"$context.path","status":"$context.status","error":"$context.error.message","responseType":"$context.error.responseType","integrationStatus":"$context.integration.status","latencyMs":"$context.responseLatency"}"#,
                },
            },
        }),
    );
    resources.insert(
        "ProducersKey".into(),
        json!({
            "Type": "AWS::ApiGateway::ApiKey",
            "DependsOn": ["ApiStage"],
            "Properties": { "Name": spec.producers_name(), "Enabled": true },
        }),
    );
    resources.insert(
        "UsagePlan".into(),
        json!({
            "Type": "AWS::ApiGateway::UsagePlan",
            "DependsOn": ["ApiStage"],
            "Properties": {
                "UsagePlanName": spec.producers_name(),
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
    let managed = |priority: u32, name: &str, counted: &[&str]| {
        let mut statement = json!({ "VendorName": "AWS", "Name": name });
        if !counted.is_empty() {
            statement["RuleActionOverrides"] = counted
                .iter()
                .map(|rule| json!({ "Name": rule, "ActionToUse": { "Count": {} } }))
                .collect::<Vec<_>>()
                .into();
        }
        json!({
            "Name": name,
            "Priority": priority,
            "OverrideAction": { "None": {} },
            "Statement": { "ManagedRuleGroupStatement": statement },
            "VisibilityConfig": { "SampledRequestsEnabled": true, "CloudWatchMetricsEnabled": true, "MetricName": name },
        })
    };
    resources.insert(
        "WebAcl".into(),
        json!({
            "Type": "AWS::WAFv2::WebACL",
            "Properties": {
                "Name": spec.api_name(),
                "Scope": "REGIONAL",
                "DefaultAction": { "Allow": {} },
                "Rules": [
                    managed(0, "AWSManagedRulesCommonRuleSet", &WAF_COUNTED_RULES),
                    managed(1, "AWSManagedRulesKnownBadInputsRuleSet", &[]),
                ],
                "VisibilityConfig": {
                    "SampledRequestsEnabled": true,
                    "CloudWatchMetricsEnabled": true,
                    "MetricName": spec.api_name(),
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

/// The rules of `AWSManagedRulesCommonRuleSet` that count instead of
/// block (AWS WAF developer guide, "Baseline rule groups"), because they
/// would refuse legitimate producers: invoices come from ERP systems and
/// SDK clients, many of which send no `User-Agent` (`NoUserAgent_HEADER`);
/// and the body rules match patterns (markup, path fragments, URLs) that
/// free-text fields such as a vendor's name or a rejection reason may hold,
/// while every other field is checked by the request model's patterns and
/// enums before anything reaches the bus. `SizeRestrictions_BODY` refuses
/// bodies over 8 KB; a valid event may reach 256 KB. The counts stay
/// visible in the rule group's metrics and sampled requests. AWS WAF
/// ignores an override naming no rule of the group, so a test keeps the
/// names to the guide's.
pub(super) const WAF_COUNTED_RULES: [&str; 6] = [
    "NoUserAgent_HEADER",
    "SizeRestrictions_BODY",
    "CrossSiteScripting_BODY",
    "GenericLFI_BODY",
    "GenericRFI_BODY",
    "EC2MetaDataSSRF_BODY",
];

/// `Deployment` and a hash of every resource a deployment snapshots (the
/// API, its resources, models, validator, methods with their integrations,
/// gateway responses), as they appear in the template.
fn deployment_id(resources: &BTreeMap<String, Value>) -> String {
    const SNAPSHOT: [&str; 6] = [
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::Resource",
        "AWS::ApiGateway::Model",
        "AWS::ApiGateway::RequestValidator",
        "AWS::ApiGateway::Method",
        "AWS::ApiGateway::GatewayResponse",
    ];
    let definition: BTreeMap<&String, Value> = resources
        .iter()
        .filter(|(_, r)| SNAPSHOT.iter().any(|t| r["Type"] == *t))
        .map(|(id, r)| (id, sorted(r)))
        .collect();
    let text = serde_json::to_string(&definition).unwrap_or_default();
    format!("Deployment{:016x}", xxhash_rust::xxh64::xxh64(text.as_bytes(), 0))
}
