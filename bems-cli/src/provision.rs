//! Creating a cell's resources from its [`CellSpec`], idempotently.
//!
//! [`provision`] reads what exists, creates what is missing, corrects what
//! differs (rule patterns, targets, filter policies, queue attributes) and
//! reports each resource as created, updated or unchanged. Running it twice
//! reports only "unchanged" the second time.
//!
//! Resources, for a cell `C` with stages `S` and partitions `P`:
//!
//! - bus `bems-C`, archive `bems-C-archive` (every `bems.invoices` event);
//! - standard queue `bems-C-bus-dlq`: EventBridge's dead-letter queue for
//!   targets it cannot reach;
//! - per stage: SNS FIFO topic `bems-C-S.fifo` (KMS-encrypted with the AWS
//!   managed key), SQS FIFO queue `bems-C-S.fifo` with DLQ
//!   `bems-C-S-dlq.fifo` after `max_receive_count` receives, and the filtered
//!   subscription (raw delivery) between them;
//! - status-change queue `bems-C-status.fifo` (+ DLQ) subscribed to every
//!   stage topic;
//! - smoke queue `bems-C-smoke.fifo` subscribed to every stage topic for
//!   smoke-test invoices only (`bems smoke` reads it);
//! - per stage: SQS FIFO route queue `bems-C-S-route.fifo` (+ DLQ
//!   `bems-C-S-route-dlq.fifo`), which only the cell's rules may send to;
//! - per stage and partition: rule `bems-C-S-pNN` with one target, the
//!   stage's route queue, with the message group `S-pNN`;
//! - rule `bems-C-unrouted` (events of our source no stage rule takes) with
//!   one target, the standard queue `bems-C-unrouted`.
//!
//! All queues use SQS-managed server-side encryption and high-throughput
//! FIFO (deduplication and throughput quotas per message group).
//!
//! ## Why route queues
//!
//! A classic EventBridge rule can give a FIFO target a message group only
//! through `SqsParameters`, documented for SQS FIFO queues (rules have no
//! SNS parameters). So the rules deliver to a route queue per stage, and the
//! route forwarder (`bems_lambda::forward`: a Lambda function on AWS, the
//! same code under the local event-source runner on the emulators) publishes
//! each message to the stage topic with the same group and the `eventId` as
//! deduplication id. The topology is the same on AWS and on LocalStack
//! (which, besides, loses events a rule sends to an SNS FIFO topic).

use std::collections::HashMap;
use std::fmt;

use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;
use bems_core::Stage;
use bems_core::routing::{CellSpec, FilterPolicy};
use serde::Serialize;

/// The AWS clients provisioning uses.
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
}

impl Clients {
    /// Clients from one shared configuration (endpoint, Region, credentials).
    pub fn new(config: &aws_config::SdkConfig) -> Clients {
        Clients {
            events: aws_sdk_eventbridge::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            apigateway: aws_sdk_apigateway::Client::new(config),
        }
    }
}

/// Settings beyond the [`CellSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionOptions {
    /// Receives before a message moves to its DLQ (1–1000).
    pub max_receive_count: u32,
    /// Visibility timeout of the stage and status queues, seconds. Size it to
    /// six times the processor's timeout, as AWS advises for Lambda.
    pub visibility_timeout_secs: u32,
    /// Days the archive keeps events (0: forever).
    pub archive_retention_days: u32,
    /// The cell is on LocalStack: deploy the API's emulator models and
    /// request template (see [`crate::api`]).
    pub emulator: bool,
    /// The IAM role API Gateway assumes to call `PutEvents`. LocalStack
    /// accepts any ARN; on AWS the `infra/` template creates the role.
    pub api_role_arn: String,
}

impl Default for ProvisionOptions {
    fn default() -> ProvisionOptions {
        ProvisionOptions {
            max_receive_count: 5,
            visibility_timeout_secs: 180,
            archive_retention_days: 30,
            emulator: false,
            api_role_arn: "arn:aws:iam::000000000000:role/bems-ingress-events".to_owned(),
        }
    }
}

/// What provisioning did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It did not exist.
    Created,
    /// It existed with other settings, now corrected.
    Updated,
    /// It existed as specified.
    Unchanged,
    /// It existed and was removed ([`crate::teardown`]).
    Deleted,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Resource kind: `bus`, `queue`, `topic`, ...
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// What happened.
    pub change: Change,
}

/// Everything provisioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// One step per resource, in creation order.
    pub steps: Vec<Step>,
}

impl Report {
    pub(crate) fn push(&mut self, kind: &'static str, name: impl Into<String>, change: Change) {
        self.steps.push(Step { kind, name: name.into(), change });
    }

    /// How many resources had `change`.
    pub fn count(&self, change: Change) -> usize {
        self.steps.iter().filter(|s| s.change == change).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{:<9} {:<13} {}", format!("{:?}", s.change).to_lowercase(), s.kind, s.name)?;
        }
        write!(
            f,
            "{} created, {} updated, {} unchanged, {} deleted",
            self.count(Change::Created),
            self.count(Change::Updated),
            self.count(Change::Unchanged),
            self.count(Change::Deleted)
        )
    }
}

/// A failed provisioning call.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ProvisionError {
    /// What was being done.
    pub step: String,
    /// What the service said.
    pub message: String,
}

fn fail(
    step: impl Into<String>,
    e: &(impl aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static),
) -> ProvisionError {
    ProvisionError { step: step.into(), message: crate::describe(e) }
}

fn code_is<E: ProvideErrorMetadata>(e: &E, codes: &[&str]) -> bool {
    e.code().is_some_and(|c| codes.iter().any(|x| c.contains(x)))
}

/// The standard queue EventBridge sends undeliverable events to.
pub fn bus_dlq_name(spec: &CellSpec) -> String {
    format!("bems-{}-bus-dlq", spec.cell_id())
}

/// A provisioned cell: what was done, and how producers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provisioned {
    /// Every resource and what happened to it.
    pub report: Report,
    /// The HTTP ingress.
    pub ingress: crate::api::Ingress,
}

/// Creates or corrects every resource of the cell, the ingress included.
pub async fn provision(
    clients: &Clients,
    spec: &CellSpec,
    options: &ProvisionOptions,
) -> Result<Provisioned, ProvisionError> {
    if !(1..=1000).contains(&options.max_receive_count) {
        return Err(ProvisionError {
            step: "options".into(),
            message: format!("max_receive_count must be 1 to 1000, got {}", options.max_receive_count),
        });
    }
    let mut report = Report::default();
    let p = Provisioner { clients, spec, options };

    p.bus(&mut report).await?;
    p.archive(&mut report).await?;
    let bus_dlq_name = bus_dlq_name(spec);
    let bus_dlq = p.queue(&mut report, &bus_dlq_name, false, None, Some(rules_may_send(spec, &bus_dlq_name))).await?;

    let mut topic_arns = HashMap::new();
    for stage in Stage::ALL {
        topic_arns.insert(stage, p.topic(&mut report, stage).await?);
    }
    let status_dlq = p.queue(&mut report, &spec.status_dlq_name(), true, None, None).await?;
    let all_topics: Vec<String> = topic_arns.values().cloned().collect();
    let status_queue = spec.status_queue_name();
    let status = p
        .queue(
            &mut report,
            &status_queue,
            true,
            Some(&status_dlq),
            Some(queue_policy(&spec.queue_arn(&status_queue), &all_topics)),
        )
        .await?;
    let smoke_queue = spec.smoke_queue_name();
    let smoke = p
        .queue(&mut report, &smoke_queue, true, None, Some(queue_policy(&spec.queue_arn(&smoke_queue), &all_topics)))
        .await?;
    let mut route_arns = HashMap::new();
    for stage in Stage::ALL {
        let topic = &topic_arns[&stage];
        let dlq = p.queue(&mut report, &spec.dlq_name(stage), true, None, None).await?;
        let name = spec.queue_name(stage);
        let policy = queue_policy(&spec.queue_arn(&name), std::slice::from_ref(topic));
        let queue = p.queue(&mut report, &name, true, Some(&dlq), Some(policy)).await?;
        p.subscription(&mut report, topic, &queue, Some(&spec.stage_filter_policy())).await?;
        p.subscription(&mut report, topic, &status, None).await?;
        p.subscription(&mut report, topic, &smoke, Some(&spec.smoke_filter_policy())).await?;

        let route_dlq = p.queue(&mut report, &spec.route_dlq_name(stage), true, None, None).await?;
        let name = spec.route_queue_name(stage);
        let route = p.queue(&mut report, &name, true, Some(&route_dlq), Some(rules_may_send(spec, &name))).await?;
        route_arns.insert(stage, route.arn);
    }
    for rule in spec.stage_rules() {
        p.rule(&mut report, &rule.name, &rule.pattern.to_json()).await?;
        p.target(&mut report, &rule.name, &route_arns[&rule.stage], Some(&rule.message_group_id), &bus_dlq.arn).await?;
    }
    let unrouted_name = spec.unrouted_queue_name();
    let unrouted =
        p.queue(&mut report, &unrouted_name, false, None, Some(rules_may_send(spec, &unrouted_name))).await?;
    let rule = spec.unrouted_rule_name();
    p.rule(&mut report, &rule, &spec.unrouted_pattern().to_json()).await?;
    p.target(&mut report, &rule, &unrouted.arn, None, &bus_dlq.arn).await?;
    let ingress =
        crate::api::provision_api(&clients.apigateway, spec, &options.api_role_arn, options.emulator, &mut report)
            .await?;
    Ok(Provisioned { report, ingress })
}

/// A queue's URL and ARN.
#[derive(Debug, Clone)]
pub struct QueueRef {
    /// Queue URL.
    pub url: String,
    /// Queue ARN.
    pub arn: String,
}

struct Provisioner<'a> {
    clients: &'a Clients,
    spec: &'a CellSpec,
    options: &'a ProvisionOptions,
}

impl Provisioner<'_> {
    async fn bus(&self, report: &mut Report) -> Result<(), ProvisionError> {
        let name = self.spec.bus_name();
        match self.clients.events.describe_event_bus().name(&name).send().await {
            Ok(_) => report.push("bus", name, Change::Unchanged),
            Err(e) if code_is(&e, &["ResourceNotFound"]) => {
                self.clients
                    .events
                    .create_event_bus()
                    .name(&name)
                    .send()
                    .await
                    .map_err(|e| fail(format!("create bus {name}"), &e))?;
                report.push("bus", name, Change::Created);
            }
            Err(e) => return Err(fail(format!("describe bus {name}"), &e)),
        }
        Ok(())
    }

    async fn archive(&self, report: &mut Report) -> Result<(), ProvisionError> {
        let name = self.spec.archive_name();
        match self.clients.events.describe_archive().archive_name(&name).send().await {
            Ok(_) => report.push("archive", name, Change::Unchanged),
            Err(e) if code_is(&e, &["ResourceNotFound"]) => {
                self.clients
                    .events
                    .create_archive()
                    .archive_name(&name)
                    .event_source_arn(self.spec.bus_arn())
                    .event_pattern(format!(r#"{{"source":["{}"]}}"#, bems_core::envelope::EVENT_SOURCE))
                    .retention_days(i32::try_from(self.options.archive_retention_days).unwrap_or(i32::MAX))
                    .send()
                    .await
                    .map_err(|e| fail(format!("create archive {name}"), &e))?;
                report.push("archive", name, Change::Created);
            }
            Err(e) => return Err(fail(format!("describe archive {name}"), &e)),
        }
        Ok(())
    }

    /// A queue with the given redrive target and resource policy.
    async fn queue(
        &self,
        report: &mut Report,
        name: &str,
        fifo: bool,
        dlq: Option<&QueueRef>,
        policy: Option<String>,
    ) -> Result<QueueRef, ProvisionError> {
        let arn = self.spec.queue_arn(name);
        let mut wanted: HashMap<QueueAttributeName, String> = HashMap::new();
        wanted.insert(QueueAttributeName::SqsManagedSseEnabled, "true".into());
        if fifo {
            wanted.insert(QueueAttributeName::ContentBasedDeduplication, "true".into());
            // High-throughput FIFO: see the template's `fifo_queue` for the arithmetic.
            wanted.insert(QueueAttributeName::DeduplicationScope, "messageGroup".into());
            wanted.insert(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId".into());
        }
        if name == self.spec.smoke_queue_name() {
            // Only smoke-test events, read within minutes by `bems smoke`.
            wanted.insert(QueueAttributeName::MessageRetentionPeriod, SMOKE_RETENTION_SECS.to_string());
        } else if name.ends_with("-dlq.fifo") || name.ends_with("-bus-dlq") || name == self.spec.unrouted_queue_name() {
            wanted.insert(QueueAttributeName::MessageRetentionPeriod, "1209600".into());
        } else {
            wanted.insert(QueueAttributeName::VisibilityTimeout, self.options.visibility_timeout_secs.to_string());
        }
        if let Some(dlq) = dlq {
            wanted.insert(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({ "deadLetterTargetArn": dlq.arn, "maxReceiveCount": self.options.max_receive_count }).to_string(),
            );
        }
        if let Some(policy) = policy {
            wanted.insert(QueueAttributeName::Policy, policy);
        }

        let sqs = &self.clients.sqs;
        match sqs.get_queue_url().queue_name(name).send().await {
            Ok(found) => {
                let url = found.queue_url().unwrap_or_default().to_owned();
                let current = sqs
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(QueueAttributeName::All)
                    .send()
                    .await
                    .map_err(|e| fail(format!("read queue {name}"), &e))?;
                let current = current.attributes().cloned().unwrap_or_default();
                let differs: HashMap<QueueAttributeName, String> = wanted
                    .into_iter()
                    .filter(|(k, v)| !same_attribute(k, current.get(k).map(String::as_str), v))
                    .collect();
                if differs.is_empty() {
                    report.push("queue", name, Change::Unchanged);
                } else {
                    sqs.set_queue_attributes()
                        .queue_url(&url)
                        .set_attributes(Some(differs))
                        .send()
                        .await
                        .map_err(|e| fail(format!("update queue {name}"), &e))?;
                    report.push("queue", name, Change::Updated);
                }
                Ok(QueueRef { url, arn })
            }
            Err(e) if code_is(&e, &["NonExistentQueue", "QueueDoesNotExist"]) => {
                if fifo {
                    wanted.insert(QueueAttributeName::FifoQueue, "true".into());
                }
                let created = sqs
                    .create_queue()
                    .queue_name(name)
                    .set_attributes(Some(wanted))
                    .send()
                    .await
                    .map_err(|e| fail(format!("create queue {name}"), &e))?;
                report.push("queue", name, Change::Created);
                Ok(QueueRef { url: created.queue_url().unwrap_or_default().to_owned(), arn })
            }
            Err(e) => Err(fail(format!("look up queue {name}"), &e)),
        }
    }

    async fn topic(&self, report: &mut Report, stage: Stage) -> Result<String, ProvisionError> {
        let name = self.spec.topic_name(stage);
        let arn = self.spec.topic_arn(stage);
        let sns = &self.clients.sns;
        let wanted = [
            ("ContentBasedDeduplication", "true".to_owned()),
            // Only the route forwarder publishes, with its IAM role: the
            // AWS managed key and the default topic policy are enough.
            ("KmsMasterKeyId", "alias/aws/sns".to_owned()),
            ("FifoThroughputScope", "MessageGroup".to_owned()),
        ];
        match sns.get_topic_attributes().topic_arn(&arn).send().await {
            Ok(found) => {
                let differing = differing(found.attributes(), &wanted);
                for (k, v) in &differing {
                    sns.set_topic_attributes()
                        .topic_arn(&arn)
                        .attribute_name(*k)
                        .attribute_value(v)
                        .send()
                        .await
                        .map_err(|e| fail(format!("update topic {name} {k}"), &e))?;
                }
                report.push("topic", name, if differing.is_empty() { Change::Unchanged } else { Change::Updated });
            }
            Err(e) if code_is(&e, &["NotFound"]) => {
                let mut create = sns.create_topic().name(&name).attributes("FifoTopic", "true");
                for (k, v) in wanted {
                    create = create.attributes(k, v);
                }
                create.send().await.map_err(|e| fail(format!("create topic {name}"), &e))?;
                report.push("topic", name, Change::Created);
            }
            Err(e) => return Err(fail(format!("read topic {name}"), &e)),
        }
        Ok(arn)
    }

    async fn subscription(
        &self,
        report: &mut Report,
        topic: &str,
        queue: &QueueRef,
        policy: Option<&FilterPolicy>,
    ) -> Result<(), ProvisionError> {
        let sns = &self.clients.sns;
        let label =
            format!("{} -> {}", topic.rsplit(':').next().unwrap_or(topic), queue.arn.rsplit(':').next().unwrap_or(""));
        let mut existing = None;
        let mut token = None;
        loop {
            let page = sns
                .list_subscriptions_by_topic()
                .topic_arn(topic)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| fail(format!("list subscriptions of {topic}"), &e))?;
            existing = existing.or_else(|| {
                page.subscriptions()
                    .iter()
                    .find(|s| s.endpoint() == Some(queue.arn.as_str()))
                    .and_then(|s| s.subscription_arn().map(str::to_owned))
            });
            token = page.next_token().map(str::to_owned);
            if token.is_none() || existing.is_some() {
                break;
            }
        }
        let mut wanted = vec![("RawMessageDelivery", "true".to_owned())];
        if let Some(p) = policy {
            wanted.push(("FilterPolicyScope", p.scope().as_str().to_owned()));
            wanted.push(("FilterPolicy", p.to_json()));
        }
        match existing {
            Some(arn) => {
                let current = sns
                    .get_subscription_attributes()
                    .subscription_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| fail(format!("read subscription {label}"), &e))?;
                let differing = differing(current.attributes(), &wanted);
                for (k, v) in &differing {
                    sns.set_subscription_attributes()
                        .subscription_arn(&arn)
                        .attribute_name(*k)
                        .attribute_value(v)
                        .send()
                        .await
                        .map_err(|e| fail(format!("update subscription {label} {k}"), &e))?;
                }
                report.push(
                    "subscription",
                    label,
                    if differing.is_empty() { Change::Unchanged } else { Change::Updated },
                );
            }
            None => {
                let mut subscribe =
                    sns.subscribe().topic_arn(topic).protocol("sqs").endpoint(&queue.arn).return_subscription_arn(true);
                for (k, v) in wanted {
                    subscribe = subscribe.attributes(k, v);
                }
                subscribe.send().await.map_err(|e| fail(format!("subscribe {label}"), &e))?;
                report.push("subscription", label, Change::Created);
            }
        }
        Ok(())
    }

    async fn rule(&self, report: &mut Report, name: &str, pattern: &str) -> Result<(), ProvisionError> {
        let events = &self.clients.events;
        let bus = self.spec.bus_name();
        let change = match events.describe_rule().name(name).event_bus_name(&bus).send().await {
            Ok(found) if same_json_or_text(found.event_pattern(), pattern) => Change::Unchanged,
            Ok(_) => Change::Updated,
            Err(e) if code_is(&e, &["ResourceNotFound"]) => Change::Created,
            Err(e) => return Err(fail(format!("describe rule {name}"), &e)),
        };
        if change != Change::Unchanged {
            events
                .put_rule()
                .name(name)
                .event_bus_name(&bus)
                .event_pattern(pattern)
                .state(aws_sdk_eventbridge::types::RuleState::Enabled)
                .description("BEMS stage routing, generated from the cell's CellSpec")
                .send()
                .await
                .map_err(|e| fail(format!("put rule {name}"), &e))?;
        }
        report.push("rule", name, change);
        Ok(())
    }

    async fn target(
        &self,
        report: &mut Report,
        rule: &str,
        arn: &str,
        group: Option<&str>,
        dlq_arn: &str,
    ) -> Result<(), ProvisionError> {
        use aws_sdk_eventbridge::types::{DeadLetterConfig, RetryPolicy, SqsParameters, Target};
        let events = &self.clients.events;
        let bus = self.spec.bus_name();
        let current = events
            .list_targets_by_rule()
            .rule(rule)
            .event_bus_name(&bus)
            .send()
            .await
            .map_err(|e| fail(format!("list targets of {rule}"), &e))?;
        let same = current.targets().iter().any(|t| {
            t.id() == TARGET_ID && t.arn() == arn && t.sqs_parameters().and_then(|p| p.message_group_id()) == group
        }) && current.targets().len() == 1;
        if same {
            report.push("target", rule, Change::Unchanged);
            return Ok(());
        }
        let target = Target::builder()
            .id(TARGET_ID)
            .arn(arn)
            .set_sqs_parameters(group.map(|g| SqsParameters::builder().message_group_id(g).build()))
            .dead_letter_config(DeadLetterConfig::builder().arn(dlq_arn).build())
            // A day of retries: a target outage shorter than that loses nothing.
            .retry_policy(
                RetryPolicy::builder().maximum_retry_attempts(185).maximum_event_age_in_seconds(86_400).build(),
            )
            .build()
            .map_err(|e| ProvisionError { step: format!("target of {rule}"), message: e.to_string() })?;
        let out = events
            .put_targets()
            .rule(rule)
            .event_bus_name(&bus)
            .targets(target)
            .send()
            .await
            .map_err(|e| fail(format!("put target of {rule}"), &e))?;
        if out.failed_entry_count() > 0 {
            return Err(ProvisionError {
                step: format!("put target of {rule}"),
                message: format!("{:?}", out.failed_entries()),
            });
        }
        report.push("target", rule, if current.targets().is_empty() { Change::Created } else { Change::Updated });
        Ok(())
    }
}

/// How long the smoke queue keeps a message: `bems smoke` reads its own
/// within minutes; an hour spans a slow run and drops what nobody read.
pub(crate) const SMOKE_RETENTION_SECS: u32 = 3600;

/// The id of the one target of each of the cell's rules.
pub(crate) const TARGET_ID: &str = "stage";

/// Attributes SQS reports in another spelling than they are set in.
fn same_attribute(name: &QueueAttributeName, current: Option<&str>, wanted: &str) -> bool {
    match name {
        QueueAttributeName::Policy | QueueAttributeName::RedrivePolicy => same_json_or_text(current, wanted),
        _ => current == Some(wanted),
    }
}

/// The wanted SNS attributes whose current value differs (as JSON, or as
/// text).
fn differing<'w>(
    current: Option<&HashMap<String, String>>,
    wanted: &'w [(&'static str, String)],
) -> Vec<&'w (&'static str, String)> {
    wanted.iter().filter(|(k, v)| !same_json_or_text(current.and_then(|c| c.get(*k)).map(String::as_str), v)).collect()
}

/// Equal as JSON values when both parse, else as text.
fn same_json_or_text(current: Option<&str>, wanted: &str) -> bool {
    let Some(current) = current else { return false };
    match (serde_json::from_str::<serde_json::Value>(current), serde_json::from_str::<serde_json::Value>(wanted)) {
        (Ok(a), Ok(b)) => a == b,
        _ => current == wanted,
    }
}

/// Lets the cell's topics (and nothing else) send to a queue.
fn queue_policy(queue_arn: &str, topics: &[String]) -> String {
    let mut topics = topics.to_vec();
    topics.sort();
    crate::policy::topics_may_send(&queue_arn.into(), &topics.into()).to_string()
}

/// Lets the cell's rules (and nothing else) send to the queue `queue`.
fn rules_may_send(spec: &CellSpec, queue: &str) -> String {
    let rules = format!("{}/*", spec.bus_arn().replace(":event-bus/", ":rule/"));
    crate::policy::rules_may("sqs:SendMessage", &spec.queue_arn(queue).into(), &rules.into()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_comparison_ignores_json_spelling() {
        assert!(same_json_or_text(Some(r#"{"a": 1, "b": [2]}"#), r#"{"b":[2],"a":1}"#));
        assert!(!same_json_or_text(Some(r#"{"a": 1}"#), r#"{"a":2}"#));
        assert!(same_json_or_text(Some("true"), "true"));
        assert!(!same_json_or_text(None, "true"));
    }

    #[test]
    fn policies_name_exactly_the_cells_senders() {
        let spec = CellSpec::new(
            bems_core::fields::CellId::new("c").expect("cell"),
            bems_core::fields::Region::new("eu-west-1").expect("region"),
            bems_core::fields::AccountId::new("123456789012").expect("account"),
            bems_core::partition::PartitionCount::new(2).expect("partitions"),
        )
        .expect("spec");
        let p: serde_json::Value =
            serde_json::from_str(&rules_may_send(&spec, "bems-c-posting-route.fifo")).expect("json");
        assert_eq!(p["Statement"][0]["Resource"], "arn:aws:sqs:eu-west-1:123456789012:bems-c-posting-route.fifo");
        assert_eq!(p["Statement"][0]["Action"], "sqs:SendMessage");
        assert_eq!(
            p["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"],
            "arn:aws:events:eu-west-1:123456789012:rule/bems-c/*"
        );
        let q: serde_json::Value =
            serde_json::from_str(&queue_policy("arn:q", &["arn:t2".to_owned(), "arn:t1".to_owned()])).expect("json");
        assert_eq!(
            q["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            serde_json::json!(["arn:t1", "arn:t2"])
        );
    }
}
