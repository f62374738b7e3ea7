//! The PostgreSQL writer's Lambda function, fed by the status-change queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bems_lambda::function::run_postgres_writer().await
}
