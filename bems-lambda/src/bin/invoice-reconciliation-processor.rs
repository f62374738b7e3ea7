//! `InvoiceReconciliationProcessor`: the reconciliation stage's Lambda function.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bems_lambda::function::run_stage(bems_core::Stage::Reconciliation).await
}
