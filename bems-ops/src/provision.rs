//! Deploying a cell on LocalStack: the cell template's emulator part
//! ([`bems_template::emulator_template`]), as a CloudFormation stack.
//!
//! The cell the end-to-end tests, the local cell and `bems provision` run
//! is the template itself: `cell.json` less what LocalStack cannot run
//! (functions, their event sources, Timestream, WAF, the archive, alarms,
//! logs), deployed by LocalStack's CloudFormation. So it cannot differ from
//! what `sam deploy` creates on AWS in encryption (the cell's customer
//! managed key on every topic and queue), queue attributes, policies,
//! subscriptions, filter policies, rules or the API; what is left out stays
//! generated, linted and tested on the template (`bems-template`).
//!
//! [`provision`] creates the stack, or updates it when the template or its
//! parameters changed, or leaves it alone, and says which; [`teardown`]
//! deletes it. On AWS a cell is deployed with `sam deploy` (infra/README.md):
//! its functions must be built and uploaded first.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use bems_core::routing::CellSpec;
use bems_template::{TemplateDefaults, emulator_template};
use serde::Serialize;
use serde_json::Value;

use crate::ingress::Ingress;

/// The AWS clients the operations use, from one configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EventBridge.
    pub events: aws_sdk_eventbridge::Client,
    /// SNS.
    pub sns: aws_sdk_sns::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// API Gateway (REST).
    pub apigateway: aws_sdk_apigateway::Client,
    /// CloudFormation.
    pub cloudformation: aws_sdk_cloudformation::Client,
    /// The endpoint every client calls, when it is not AWS's (LocalStack).
    pub endpoint: Option<String>,
}

impl Clients {
    /// Clients from one shared configuration (endpoint, Region, credentials).
    pub fn new(config: &aws_config::SdkConfig) -> Clients {
        Clients {
            events: aws_sdk_eventbridge::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            apigateway: aws_sdk_apigateway::Client::new(config),
            cloudformation: aws_sdk_cloudformation::Client::new(config),
            endpoint: config.endpoint_url().map(str::to_owned),
        }
    }
}

/// The template parameters a provisioned cell sets; the others keep the
/// template's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionOptions {
    /// Receives before a message moves to its DLQ (1–1000):
    /// `MaxReceiveCount`.
    pub max_receive_count: u32,
    /// Visibility timeout of the stage and status queues, seconds:
    /// `VisibilityTimeoutSeconds`. Size it to six times the processor's
    /// timeout, as AWS advises for Lambda.
    pub visibility_timeout_secs: u32,
}

impl Default for ProvisionOptions {
    fn default() -> ProvisionOptions {
        let defaults = TemplateDefaults::default();
        ProvisionOptions {
            max_receive_count: defaults.max_receive_count,
            visibility_timeout_secs: defaults.visibility_timeout_secs,
        }
    }
}

impl ProvisionOptions {
    /// The stack's parameters: these two, no store (the tests and the local
    /// cell run the status writer themselves, against moto), and the
    /// account's API Gateway logging role left alone (LocalStack's stages
    /// do not log).
    pub fn parameters(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ConfigureApiGatewayAccount", "false".to_owned()),
            ("MaxReceiveCount", self.max_receive_count.to_string()),
            ("Store", "none".to_owned()),
            ("VisibilityTimeoutSeconds", self.visibility_timeout_secs.to_string()),
        ]
    }
}

/// What happened to the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It did not exist.
    Created,
    /// Its template or parameters differed, now updated.
    Updated,
    /// It was as specified.
    Unchanged,
    /// It existed and was deleted ([`teardown`]).
    Deleted,
}

/// One resource of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Its logical id in the template: `IngestionQueue`.
    pub logical_id: String,
    /// Its type: `AWS::SQS::Queue`.
    pub resource_type: String,
    /// Its physical id: a queue URL, a topic ARN, a name.
    pub physical_id: String,
}

/// What provisioning or teardown did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The stack (`bems-<cell>`).
    pub stack: String,
    /// What happened to it.
    pub change: Change,
    /// Its resources, by logical id (for a teardown: those it had).
    pub resources: Vec<Resource>,
}

impl Report {
    /// How many resources of `resource_type` the stack has.
    pub fn count(&self, resource_type: &str) -> usize {
        self.resources.iter().filter(|r| r.resource_type == resource_type).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.resources {
            writeln!(f, "{:<32} {:<36} {}", r.resource_type, r.logical_id, r.physical_id)?;
        }
        let change = format!("{:?}", self.change).to_lowercase();
        write!(f, "stack {} {change}: {} resources", self.stack, self.resources.len())
    }
}

/// A provisioned cell: what was done, and how producers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provisioned {
    /// The stack and its resources.
    pub report: Report,
    /// The HTTP ingress.
    pub ingress: Ingress,
}

/// Why provisioning or teardown failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// An option is out of range.
    #[error("{name} must be {range}, got {value}")]
    Option {
        /// The option.
        name: &'static str,
        /// What it may be.
        range: &'static str,
        /// What it was.
        value: u32,
    },
    /// The clients point at AWS, or at no LocalStack.
    #[error(
        "bems provision deploys a cell on LocalStack (set AWS_ENDPOINT_URL); on AWS, deploy the template with sam deploy (infra/README.md)"
    )]
    NotAnEmulator,
    /// The template could not be put where CloudFormation reads it.
    #[error("upload the template to {url}: {reason}")]
    Upload {
        /// Where it was put.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A call failed.
    #[error(transparent)]
    Call(#[from] crate::CallError),
    /// The stack ended in a failed state.
    #[error("stack {stack} ended {status}: {}", reasons.join("; "))]
    Failed {
        /// The stack.
        stack: String,
        /// Its status (`ROLLBACK_COMPLETE`, ...).
        status: String,
        /// Each failed resource and why.
        reasons: Vec<String>,
    },
    /// The stack did not settle in time.
    #[error("stack {stack} still {status} after {} s", waited.as_secs())]
    Timeout {
        /// The stack.
        stack: String,
        /// Its last status.
        status: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The stack has no output the ingress needs.
    #[error("stack {stack} has no output {output}")]
    Output {
        /// The stack.
        stack: String,
        /// The output.
        output: &'static str,
    },
    /// A stack exists but in a state that neither update nor create can
    /// follow (another operation is in progress).
    #[error("stack {stack} is {status}; wait for it to settle, or run bems teardown")]
    Busy {
        /// The stack.
        stack: String,
        /// Its status.
        status: String,
    },
}

fn call<E>(step: impl Into<String>, e: E) -> ProvisionError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    ProvisionError::Call(crate::CallError::new(step, e))
}

/// How long a stack may take to settle. LocalStack creates a cell of 16
/// partitions in seconds; the margin is for a loaded machine.
const SETTLE: Duration = Duration::from_secs(300);

/// Creates `spec`'s cell on LocalStack, updates it if it differs, or leaves
/// it alone; returns what was done and the ingress.
pub async fn provision(
    clients: &Clients,
    spec: &CellSpec,
    options: &ProvisionOptions,
) -> Result<Provisioned, ProvisionError> {
    if !(1..=1000).contains(&options.max_receive_count) {
        return Err(ProvisionError::Option {
            name: "max_receive_count",
            range: "1 to 1000",
            value: options.max_receive_count,
        });
    }
    if options.visibility_timeout_secs > 43_200 {
        return Err(ProvisionError::Option {
            name: "visibility_timeout_secs",
            range: "0 to 43200",
            value: options.visibility_timeout_secs,
        });
    }
    let template = emulator_template(spec, &TemplateDefaults::default());
    let stack = deploy_stack(clients, &spec.stack_name(), &template, &options.parameters()).await?;
    let output = |name: &'static str| {
        stack
            .outputs
            .get(name)
            .cloned()
            .ok_or_else(|| ProvisionError::Output { stack: stack.report.stack.clone(), output: name })
    };
    let (rest_api_id, key_id) = (output("ApiId")?, output("ProducersKeyId")?);
    let key = clients
        .apigateway
        .get_api_key()
        .api_key(&key_id)
        .include_value(true)
        .send()
        .await
        .map_err(|e| call(format!("read the producers' key {key_id}"), e))?;
    let ingress = Ingress { rest_api_id, api_key: key.value().unwrap_or_default().to_owned() };
    Ok(Provisioned { report: stack.report, ingress })
}

/// Deletes `spec`'s cell (its stack, and the uploaded template) if it
/// exists. Its queues go with it, whatever they hold: drain a cell in use
/// first.
pub async fn teardown(clients: &Clients, spec: &CellSpec) -> Result<Report, ProvisionError> {
    delete_stack(clients, &spec.stack_name()).await
}

/// A stack deployed on LocalStack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// What was done, and its resources.
    pub report: Report,
    /// Its outputs, by name.
    pub outputs: BTreeMap<String, String>,
}

/// Deploys `template` with `parameters` as the stack `stack` on the
/// LocalStack the clients point at: creates it, updates it if its template
/// or parameters differ, or leaves it alone. [`provision`] deploys a cell
/// with it; a test can deploy a variant of the cell template the same way.
pub async fn deploy_stack(
    clients: &Clients,
    stack: &str,
    template: &Value,
    parameters: &[(&'static str, String)],
) -> Result<Deployed, ProvisionError> {
    let endpoint = emulator_endpoint(clients).await?;
    let cfn = &clients.cloudformation;
    let sdk_parameters: Vec<Parameter> =
        parameters.iter().map(|(k, v)| Parameter::builder().parameter_key(*k).parameter_value(v).build()).collect();
    let change = match find_stack(cfn, stack).await? {
        Some((id, StackStatus::RollbackComplete)) => {
            // A first creation that failed leaves a stack only deletion
            // can follow.
            delete_and_wait(cfn, stack, &id).await?;
            create(cfn, &endpoint, stack, template, sdk_parameters).await?;
            Change::Created
        }
        Some((_, status)) if settled(&status) => {
            if same_stack(cfn, stack, template, parameters).await? {
                Change::Unchanged
            } else {
                let url = upload(&endpoint, stack, template).await?;
                cfn.update_stack()
                    .stack_name(stack)
                    .template_url(url)
                    .capabilities(Capability::CapabilityIam)
                    .set_parameters(Some(sdk_parameters))
                    .send()
                    .await
                    .map_err(|e| call(format!("update stack {stack}"), e))?;
                wait(cfn, stack, &[StackStatus::UpdateComplete]).await?;
                Change::Updated
            }
        }
        Some((_, status)) => {
            return Err(ProvisionError::Busy { stack: stack.to_owned(), status: status.as_str().to_owned() });
        }
        None => {
            create(cfn, &endpoint, stack, template, sdk_parameters).await?;
            Change::Created
        }
    };
    let (outputs, resources) = (outputs(cfn, stack).await?, resources(cfn, stack).await?);
    Ok(Deployed { report: Report { stack: stack.to_owned(), change, resources }, outputs })
}

/// Deletes the stack `stack` (and its uploaded template) from the
/// LocalStack the clients point at, if it exists.
pub async fn delete_stack(clients: &Clients, stack: &str) -> Result<Report, ProvisionError> {
    let endpoint = emulator_endpoint(clients).await?;
    let cfn = &clients.cloudformation;
    let mut report = Report { stack: stack.to_owned(), change: Change::Unchanged, resources: Vec::new() };
    if let Some((id, _)) = find_stack(cfn, stack).await? {
        report.resources = resources(cfn, stack).await?;
        delete_and_wait(cfn, stack, &id).await?;
        report.change = Change::Deleted;
    }
    remove_upload(&endpoint, stack).await?;
    Ok(report)
}

/// LocalStack's endpoint, or why the clients do not point at one.
async fn emulator_endpoint(clients: &Clients) -> Result<String, ProvisionError> {
    let endpoint = clients.endpoint.clone().ok_or(ProvisionError::NotAnEmulator)?;
    let probe = endpoint.clone();
    let is_localstack = tokio::task::spawn_blocking(move || crate::is_localstack(&probe)).await.unwrap_or(false);
    if is_localstack { Ok(endpoint) } else { Err(ProvisionError::NotAnEmulator) }
}

/// A state an update can start from.
fn settled(status: &StackStatus) -> bool {
    matches!(status, StackStatus::CreateComplete | StackStatus::UpdateComplete | StackStatus::UpdateRollbackComplete)
}

/// The id and status of the live (not deleted) stack named `stack`.
async fn find_stack(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
) -> Result<Option<(String, StackStatus)>, ProvisionError> {
    let mut pages = cfn.list_stacks().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call("list stacks", e))?;
        if let Some(found) = page
            .stack_summaries()
            .iter()
            .find(|s| s.stack_name() == Some(stack) && s.stack_status() != Some(&StackStatus::DeleteComplete))
        {
            let status = found.stack_status().cloned().unwrap_or(StackStatus::CreateInProgress);
            return Ok(Some((found.stack_id().unwrap_or(stack).to_owned(), status)));
        }
    }
    Ok(None)
}

async fn create(
    cfn: &aws_sdk_cloudformation::Client,
    endpoint: &str,
    stack: &str,
    template: &Value,
    parameters: Vec<Parameter>,
) -> Result<(), ProvisionError> {
    let url = upload(endpoint, stack, template).await?;
    cfn.create_stack()
        .stack_name(stack)
        .template_url(url)
        .capabilities(Capability::CapabilityIam)
        .set_parameters(Some(parameters))
        .send()
        .await
        .map_err(|e| call(format!("create stack {stack}"), e))?;
    wait(cfn, stack, &[StackStatus::CreateComplete]).await
}

async fn delete_and_wait(cfn: &aws_sdk_cloudformation::Client, stack: &str, id: &str) -> Result<(), ProvisionError> {
    cfn.delete_stack().stack_name(id).send().await.map_err(|e| call(format!("delete stack {stack}"), e))?;
    // By id: a deleted stack stays describable by its id, not its name.
    wait(cfn, id, &[StackStatus::DeleteComplete]).await
}

/// Waits until `stack` (name or id) reaches one of `done`; any other
/// settled state is a failure, reported with each failed resource's reason.
async fn wait(cfn: &aws_sdk_cloudformation::Client, stack: &str, done: &[StackStatus]) -> Result<(), ProvisionError> {
    let started = Instant::now();
    loop {
        let described =
            cfn.describe_stacks().stack_name(stack).send().await.map_err(|e| call(format!("describe {stack}"), e))?;
        let status = described.stacks().first().and_then(|s| s.stack_status()).cloned();
        let status = status.unwrap_or(StackStatus::CreateInProgress);
        if done.contains(&status) {
            return Ok(());
        }
        if !status.as_str().ends_with("_IN_PROGRESS") {
            return Err(ProvisionError::Failed {
                stack: stack.to_owned(),
                status: status.as_str().to_owned(),
                reasons: failures(cfn, stack).await,
            });
        }
        if started.elapsed() > SETTLE {
            return Err(ProvisionError::Timeout {
                stack: stack.to_owned(),
                status: status.as_str().to_owned(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each resource that failed, with CloudFormation's reason.
async fn failures(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Vec<String> {
    let Ok(events) = cfn.describe_stack_events().stack_name(stack).send().await else {
        return vec!["(its events could not be read)".to_owned()];
    };
    events
        .stack_events()
        .iter()
        .filter(|e| e.resource_status().is_some_and(|s| s.as_str().ends_with("_FAILED")))
        .map(|e| {
            format!(
                "{} ({}): {}",
                e.logical_resource_id().unwrap_or("?"),
                e.resource_type().unwrap_or("?"),
                e.resource_status_reason().unwrap_or("no reason given")
            )
        })
        .collect()
}

/// Whether the deployed stack has exactly this template and these
/// parameters.
async fn same_stack(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
    template: &Value,
    parameters: &[(&'static str, String)],
) -> Result<bool, ProvisionError> {
    let deployed = cfn
        .get_template()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| call(format!("get the template of {stack}"), e))?;
    let deployed: Option<Value> = deployed.template_body().and_then(|t| serde_json::from_str(t).ok());
    if deployed.as_ref() != Some(template) {
        return Ok(false);
    }
    let described =
        cfn.describe_stacks().stack_name(stack).send().await.map_err(|e| call(format!("describe {stack}"), e))?;
    let live: Vec<(String, String)> = described
        .stacks()
        .first()
        .map(|s| s.parameters())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p.parameter_key()?.to_owned(), p.parameter_value()?.to_owned())))
        .collect();
    Ok(parameters.iter().all(|(k, v)| live.iter().any(|(lk, lv)| lk == k && lv == v)))
}

async fn outputs(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
) -> Result<BTreeMap<String, String>, ProvisionError> {
    let described =
        cfn.describe_stacks().stack_name(stack).send().await.map_err(|e| call(format!("describe {stack}"), e))?;
    Ok(described
        .stacks()
        .first()
        .map(|s| s.outputs())
        .unwrap_or_default()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect())
}

async fn resources(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<Vec<Resource>, ProvisionError> {
    let listed = cfn
        .describe_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| call(format!("list the resources of {stack}"), e))?;
    let mut resources: Vec<Resource> = listed
        .stack_resources()
        .iter()
        .map(|r| Resource {
            logical_id: r.logical_resource_id().unwrap_or_default().to_owned(),
            resource_type: r.resource_type().unwrap_or_default().to_owned(),
            physical_id: r.physical_resource_id().unwrap_or_default().to_owned(),
        })
        .collect();
    resources.sort_by(|a, b| a.logical_id.cmp(&b.logical_id));
    Ok(resources)
}

/// The bucket `stack`'s template is uploaded to: CloudFormation takes a
/// template over 51,200 bytes only from S3, and a cell's is larger.
fn template_bucket(endpoint: &str, stack: &str) -> String {
    format!("{}/{stack}-templates", endpoint.trim_end_matches('/'))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Puts `template` in the cell's bucket on LocalStack's S3 (which takes
/// unsigned requests); returns its URL.
async fn upload(endpoint: &str, stack: &str, template: &Value) -> Result<String, ProvisionError> {
    let bucket = template_bucket(endpoint, stack);
    let url = format!("{bucket}/cell.json");
    let body = template.to_string();
    let target = url.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let agent = agent();
        let created = agent.put(&bucket).send_empty().map_err(|e| e.to_string())?;
        // 409: the bucket is already there (ours, from an earlier run).
        if !created.status().is_success() && created.status() != 409 {
            return Err(format!("create bucket: HTTP {}", created.status()));
        }
        let put = agent.put(&target).send(body.as_bytes()).map_err(|e| e.to_string())?;
        if put.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", put.status())) }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    result.map(|()| url.clone()).map_err(|reason| ProvisionError::Upload { url, reason })
}

/// Deletes the uploaded template and its bucket, if they exist.
async fn remove_upload(endpoint: &str, stack: &str) -> Result<(), ProvisionError> {
    let bucket = template_bucket(endpoint, stack);
    let url = format!("{bucket}/cell.json");
    let target = url.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let agent = agent();
        for (what, at) in [("template", &target), ("bucket", &bucket)] {
            let answer = agent.delete(at.as_str()).call().map_err(|e| e.to_string())?;
            if !answer.status().is_success() && answer.status() != 404 {
                return Err(format!("delete the {what}: HTTP {}", answer.status()));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    .map_err(|reason| ProvisionError::Upload { url, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_the_templates() {
        let template = emulator_template(
            &CellSpec::new(
                bems_core::fields::CellId::new("c1").unwrap(),
                bems_core::fields::Region::new("us-east-1").unwrap(),
                bems_core::fields::AccountId::new("000000000000").unwrap(),
                bems_core::PartitionCount::new(2).unwrap(),
            )
            .unwrap(),
            &TemplateDefaults::default(),
        );
        for (name, _) in ProvisionOptions::default().parameters() {
            assert!(template["Parameters"].get(name).is_some(), "the template has no parameter {name}");
        }
        // Every parameter without a default is set.
        let set: Vec<&str> = ProvisionOptions::default().parameters().iter().map(|(k, _)| *k).collect();
        if let Some(parameters) = template["Parameters"].as_object() {
            for (name, p) in parameters {
                assert!(
                    p.get("Default").is_some() || set.contains(&name.as_str()),
                    "{name} has no default and is not set"
                );
            }
        }
    }
}
