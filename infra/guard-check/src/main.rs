//! `bems-guard-check CELL_DIR...`: evaluates the Guard rules of each cell
//! directory's `security.json` (AWS Config `CUSTOM_POLICY` rules) with
//! AWS's Guard engine, the one AWS Config runs, against configuration items
//! built from the same directory's `cell.json` and `rules-*.json`:
//!
//! - every queue of the cell, recorded with its key, passes the queue rule,
//!   and fails it without a key or under the AWS managed key;
//! - every target of every stage rule passes the target rule, and fails it
//!   without its dead-letter queue or without its retry policy;
//! - another application's queue and a rule on another bus are skipped.
//!
//! So a rule that cannot fail, or one the cell itself breaks, is caught
//! before it reaches an account. Exits 0 when every expectation holds, 1
//! otherwise, listing each one that did not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: bems-guard-check CELL_DIR...");
        return ExitCode::from(2);
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        match check(dir) {
            Ok(checked) => println!("guard-check: {}: {checked} expectations hold", dir.display()),
            Err(mut problems) => failures.append(&mut problems),
        }
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for f in &failures {
        eprintln!("guard-check: {f}");
    }
    ExitCode::FAILURE
}

fn read(dir: &Path, name: &str) -> Result<Value, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What Guard says of `item` under `policy`: `PASS`, `FAIL` or `SKIP`.
fn evaluate(policy: &str, item: &Value) -> Result<String, String> {
    let item = item.to_string();
    let report = cfn_guard::run_checks(
        cfn_guard::ValidateInput { content: &item, file_name: "configuration-item.json" },
        cfn_guard::ValidateInput { content: policy, file_name: "rule.guard" },
        false,
    )
    .map_err(|e| format!("Guard could not evaluate the rule: {e}"))?;
    let report: Value = serde_json::from_str(&report).map_err(|e| format!("Guard's report: {e}"))?;
    report["status"].as_str().map(str::to_owned).ok_or_else(|| format!("Guard's report has no status: {report}"))
}

/// A configuration item as AWS Config records one.
fn item(resource_type: &str, configuration: &Value) -> Value {
    json!({ "resourceType": resource_type, "configuration": configuration })
}

/// The Guard policy of `security.json` scoped to `resource_type`.
fn policy(security: &Value, resource_type: &str) -> Result<String, String> {
    security["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, r)| &r["Properties"])
        .find(|p| p["Source"]["Owner"] == "CUSTOM_POLICY" && p["Scope"]["ComplianceResourceTypes"][0] == resource_type)
        .and_then(|p| p["Source"]["CustomPolicyDetails"]["PolicyText"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("security.json has no Guard rule for {resource_type}"))
}

/// Checks one cell directory; the number of expectations that held, or
/// every one that did not.
fn check(dir: &Path) -> Result<usize, Vec<String>> {
    let mut t = Tally { dir, problems: Vec::new(), held: 0 };
    let (main, security) = match (read(dir, "cell.json"), read(dir, "security.json")) {
        (Ok(m), Ok(s)) => (m, s),
        (m, s) => return Err([m.err(), s.err()].into_iter().flatten().collect()),
    };
    let cell = main["Metadata"]["Bems"]["cellId"].as_str().unwrap_or_default().to_owned();
    let (account, region) = ("123456789012", "eu-west-1");
    let queue_arn = |name: &str| format!("arn:aws:sqs:{region}:{account}:{name}");
    let resources = main["Resources"].as_object().cloned().unwrap_or_default();

    match policy(&security, "AWS::SQS::Queue") {
        Ok(rule) => {
            let mut queues = 0;
            for (id, r) in resources.iter().filter(|(_, r)| r["Type"] == "AWS::SQS::Queue") {
                queues += 1;
                let p = &r["Properties"];
                let name = p["QueueName"].as_str().unwrap_or_default();
                // `Ref` of a key is its id, which is what Config records.
                if p["KmsMasterKeyId"]["Ref"] != "CellKey" {
                    t.problems.push(format!("{}: {id} is not encrypted with the cell key", dir.display()));
                }
                let recorded = |key: Option<&str>| {
                    let mut c = json!({ "QueueName": name, "QueueArn": queue_arn(name) });
                    if let Some(key) = key {
                        c["KmsMasterKeyId"] = key.into();
                    }
                    item("AWS::SQS::Queue", &c)
                };
                let key = "1234abcd-12ab-34cd-56ef-1234567890ab";
                t.expect(format!("{id} with the cell key"), &rule, &recorded(Some(key)), "PASS");
                t.expect(format!("{id} without a key"), &rule, &recorded(None), "FAIL");
                t.expect(format!("{id} under alias/aws/sqs"), &rule, &recorded(Some("alias/aws/sqs")), "FAIL");
            }
            if queues == 0 {
                t.problems.push(format!("{}: cell.json has no queues", dir.display()));
            }
            let other = item("AWS::SQS::Queue", &json!({ "QueueName": "payroll.fifo" }));
            t.expect("another application's queue".into(), &rule, &other, "SKIP");
        }
        Err(e) => t.problems.push(e),
    }

    match policy(&security, "AWS::Events::Rule") {
        Ok(rule) => {
            // The bus the rules are recorded on: the template's own.
            let bus = resources
                .get("Bus")
                .and_then(|b| b["Properties"]["Name"].as_str())
                .map_or_else(|| format!("(cell {cell} has no Bus)"), str::to_owned);
            let mut rules = 0;
            for nested in resources.values().filter(|r| r["Type"] == "AWS::CloudFormation::Stack") {
                let file = nested["Properties"]["TemplateURL"].as_str().unwrap_or_default();
                let stack = match read(dir, file) {
                    Ok(s) => s,
                    Err(e) => {
                        t.problems.push(e);
                        continue;
                    }
                };
                for (id, r) in stack["Resources"].as_object().into_iter().flatten() {
                    rules += 1;
                    let recorded = |drop: Option<&str>| {
                        let mut target = r["Properties"]["Targets"][0].clone();
                        // Config records resolved ARNs, not the stack's parameters.
                        target["Arn"] = queue_arn(&format!("{bus}-route.fifo")).into();
                        target["DeadLetterConfig"]["Arn"] = queue_arn(&format!("{bus}-bus-dlq")).into();
                        if let (Some(field), Some(t)) = (drop, target.as_object_mut()) {
                            t.remove(field);
                        }
                        let name = &r["Properties"]["Name"];
                        item("AWS::Events::Rule", &json!({ "Name": name, "EventBusName": bus, "Targets": [target] }))
                    };
                    t.expect(format!("{file} {id}"), &rule, &recorded(None), "PASS");
                    t.expect(format!("{file} {id} without a DLQ"), &rule, &recorded(Some("DeadLetterConfig")), "FAIL");
                    t.expect(
                        format!("{file} {id} without a retry policy"),
                        &rule,
                        &recorded(Some("RetryPolicy")),
                        "FAIL",
                    );
                }
            }
            if rules == 0 {
                t.problems.push(format!("{}: no stage rules found through cell.json's nested stacks", dir.display()));
            }
            let elsewhere = item(
                "AWS::Events::Rule",
                &json!({ "EventBusName": "default", "Targets": [{ "Arn": queue_arn("other") }] }),
            );
            t.expect("a rule on another bus".into(), &rule, &elsewhere, "SKIP");
        }
        Err(e) => t.problems.push(e),
    }
    if t.problems.is_empty() { Ok(t.held) } else { Err(t.problems) }
}

/// The expectations of one directory: how many held, and what went wrong.
struct Tally<'a> {
    dir: &'a Path,
    problems: Vec<String>,
    held: usize,
}

impl Tally<'_> {
    /// Expects Guard to say `want` of `item` under `policy`.
    fn expect(&mut self, what: String, policy: &str, item: &Value, want: &str) {
        match evaluate(policy, item) {
            Ok(got) if got == want => self.held += 1,
            Ok(got) => self.problems.push(format!("{}: {what}: Guard says {got}, expected {want}", self.dir.display())),
            Err(e) => self.problems.push(format!("{}: {what}: {e}", self.dir.display())),
        }
    }
}
