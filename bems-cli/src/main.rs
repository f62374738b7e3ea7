//! `bems`: the BEMS operator CLI. Thin: parsing and printing only.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad arguments (clap).

use anyhow::Context;
use bems_cli::provision::{Clients, ProvisionOptions, provision};
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::{CellSpec, Quotas};
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bems",
    version,
    about = "Operate BEMS cells: provision, tear down, write the CloudFormation template."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or correct every resource of a cell; safe to run again.
    Provision {
        #[command(flatten)]
        cell: CellArgs,
        /// Receives before a message moves to its dead-letter queue.
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
        /// Visibility timeout of the stage queues, in seconds.
        #[arg(long, default_value_t = 180)]
        visibility_timeout: u32,
        /// The cell is on LocalStack: deploy the API models and request template it can run.
        #[arg(long)]
        emulator: bool,
        /// IAM role API Gateway assumes to call PutEvents (AWS; LocalStack accepts any).
        #[arg(long)]
        api_role_arn: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete every resource of a cell (its queues' messages included).
    Teardown {
        #[command(flatten)]
        cell: CellArgs,
        /// Required: confirms that messages in the cell's queues may be lost.
        #[arg(long)]
        yes: bool,
    },
    /// Write the cell's CloudFormation template files (cell.json and one rules file per stage) to a directory.
    Template {
        #[command(flatten)]
        cell: CellArgs,
        /// Directory to write to (created if missing).
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// The BEMS workspace (where `sam build` finds bems-lambda), relative to --out.
        #[arg(long, default_value = "../../..")]
        code_uri: String,
    },
}

#[derive(Args)]
struct CellArgs {
    /// Cell id (lowercase letters, digits, inner hyphens; at most 20).
    #[arg(long, env = "BEMS_CELL")]
    cell: String,
    /// AWS Region of the cell.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// AWS account of the cell (LocalStack: 000000000000).
    #[arg(long, env = "BEMS_ACCOUNT", default_value = "000000000000")]
    account: String,
    /// Partitions, 1-99.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Raised "rules per event bus" quota, if any.
    #[arg(long, default_value_t = 300)]
    rules_per_bus: u32,
}

impl CellArgs {
    fn spec(&self) -> anyhow::Result<CellSpec> {
        Ok(CellSpec::with_quotas(
            CellId::new(&self.cell).context("--cell")?,
            Region::new(&self.region).context("--region")?,
            AccountId::new(&self.account).context("--account")?,
            PartitionCount::new(self.partitions).context("--partitions")?,
            Quotas { rules_per_bus: self.rules_per_bus, ..Quotas::default() },
        )?)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bems: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Provision { cell, max_receive_count, visibility_timeout, emulator, api_role_arn, json } => {
            let spec = cell.spec()?;
            let clients = Clients::new(&bems_cli::aws_config(Some(&cell.region)).await);
            let mut options = ProvisionOptions {
                max_receive_count,
                visibility_timeout_secs: visibility_timeout,
                emulator,
                ..ProvisionOptions::default()
            };
            if let Some(role) = api_role_arn {
                options.api_role_arn = role;
            }
            let done = provision(&clients, &spec, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!("{}", done.report);
                println!(
                    "ingress: REST API {} (stage {}), producer API key {}",
                    done.ingress.rest_api_id,
                    bems_cli::api::STAGE_NAME,
                    done.ingress.api_key
                );
            }
        }
        Command::Teardown { cell, yes } => {
            anyhow::ensure!(yes, "teardown deletes the cell's queues and their messages; pass --yes to confirm");
            let spec = cell.spec()?;
            let clients = Clients::new(&bems_cli::aws_config(Some(&cell.region)).await);
            println!("{}", bems_cli::teardown::teardown(&clients, &spec).await?);
        }
        Command::Template { cell, out, code_uri } => {
            let spec = cell.spec()?;
            let defaults = bems_cli::template::TemplateDefaults { code_uri, ..Default::default() };
            let template = bems_cli::template::cell_template(&spec, &defaults);
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            for (name, text) in template.texts() {
                let path = out.join(name);
                std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}
