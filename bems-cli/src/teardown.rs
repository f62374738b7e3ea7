//! Deleting a cell's resources: the inverse of [`crate::provision`].
//!
//! Deletes what exists, skips what does not (so it is idempotent too), and
//! reports each resource it removed. Order: rules' targets and rules, the
//! archive and the bus, the ingress (API, usage plan, key), topics (their
//! subscriptions go with them), then queues. Queues hold messages, so a cell
//! in use should be drained first: this deletes whatever they contain.

use bems_core::Stage;
use bems_core::routing::CellSpec;

use crate::provision::{Change, Clients, ProvisionError, Report, TARGET_ID, bus_dlq_name};

fn fail(
    step: impl Into<String>,
    e: &(impl aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static),
) -> ProvisionError {
    ProvisionError { step: step.into(), message: crate::describe(e) }
}

fn missing(text: &str) -> bool {
    ["NotFound", "NonExistentQueue", "QueueDoesNotExist", "does not exist"].iter().any(|m| text.contains(m))
}

/// Removes every resource of `spec`'s cell that exists.
pub async fn teardown(clients: &Clients, spec: &CellSpec) -> Result<Report, ProvisionError> {
    let mut report = Report::default();
    let bus = spec.bus_name();
    let events = &clients.events;
    let rules = spec.stage_rules().into_iter().map(|r| r.name).chain([spec.unrouted_rule_name()]);
    for rule in rules {
        match events.remove_targets().rule(&rule).event_bus_name(&bus).ids(TARGET_ID).send().await {
            Ok(_) => {}
            Err(e) if missing(&crate::describe(&e)) => continue,
            Err(e) => return Err(fail(format!("remove target of {rule}"), &e)),
        }
        match events.delete_rule().name(&rule).event_bus_name(&bus).send().await {
            Ok(_) => report.push("rule", &rule, Change::Deleted),
            Err(e) if missing(&crate::describe(&e)) => {}
            Err(e) => return Err(fail(format!("delete rule {rule}"), &e)),
        }
    }
    let archive = spec.archive_name();
    match events.delete_archive().archive_name(&archive).send().await {
        Ok(_) => report.push("archive", archive, Change::Deleted),
        Err(e) if missing(&crate::describe(&e)) => {}
        Err(e) => return Err(fail(format!("delete archive {archive}"), &e)),
    }
    // DeleteEventBus succeeds for a bus that does not exist: look first, so
    // the report says what was really removed.
    if events.describe_event_bus().name(&bus).send().await.is_ok() {
        events.delete_event_bus().name(&bus).send().await.map_err(|e| fail(format!("delete bus {bus}"), &e))?;
        report.push("bus", &bus, Change::Deleted);
    }
    crate::api::teardown_api(&clients.apigateway, spec, &mut report).await?;
    for stage in Stage::ALL {
        let topic = spec.topic_arn(stage);
        if clients.sns.get_topic_attributes().topic_arn(&topic).send().await.is_ok() {
            clients
                .sns
                .delete_topic()
                .topic_arn(&topic)
                .send()
                .await
                .map_err(|e| fail(format!("delete topic {topic}"), &e))?;
            report.push("topic", spec.topic_name(stage), Change::Deleted);
        }
    }
    let mut queues = vec![
        bus_dlq_name(spec),
        spec.unrouted_queue_name(),
        spec.status_queue_name(),
        spec.status_dlq_name(),
        spec.smoke_queue_name(),
    ];
    for stage in Stage::ALL {
        queues.extend([
            spec.queue_name(stage),
            spec.dlq_name(stage),
            spec.route_queue_name(stage),
            spec.route_dlq_name(stage),
        ]);
    }
    for name in queues {
        let Ok(found) = clients.sqs.get_queue_url().queue_name(&name).send().await else { continue };
        clients
            .sqs
            .delete_queue()
            .queue_url(found.queue_url().unwrap_or_default())
            .send()
            .await
            .map_err(|e| fail(format!("delete queue {name}"), &e))?;
        report.push("queue", name, Change::Deleted);
    }
    Ok(report)
}
