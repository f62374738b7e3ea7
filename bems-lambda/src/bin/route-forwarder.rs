//! The route forwarder's Lambda function, fed by the four route queues.
//! Outside Lambda it polls the route queues itself (emulator cells).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bems_lambda::function::run_forwarder().await
}
