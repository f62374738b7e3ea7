//! A deployed ingress: its URLs, and its API and producers' key found by
//! name (what `bems smoke` and `bems send --api` need). What the ingress
//! is, the template defines ([`bems_template::api`]).

use bems_core::Stage;
use bems_core::routing::CellSpec;
use bems_template::api::STAGE_NAME;

use crate::CallError;

/// What callers need to use the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    /// The REST API id.
    pub rest_api_id: String,
    /// The producers' API key (send it as `x-api-key`).
    pub api_key: String,
}

impl Ingress {
    /// The URL of `POST /invoices/<stage>` on LocalStack at `endpoint`.
    pub fn localstack_url(&self, endpoint: &str, stage: Stage) -> String {
        format!(
            "{}/restapis/{}/{STAGE_NAME}/_user_request_/invoices/{stage}",
            endpoint.trim_end_matches('/'),
            self.rest_api_id
        )
    }

    /// The URL of `POST /invoices/<stage>` on AWS.
    pub fn aws_url(&self, region: &str, stage: Stage) -> String {
        format!("https://{}.execute-api.{region}.amazonaws.com/{STAGE_NAME}/invoices/{stage}", self.rest_api_id)
    }
}

/// The id of `spec`'s REST API, found by its name.
pub async fn find_api(client: &aws_sdk_apigateway::Client, spec: &CellSpec) -> Result<String, LookupError> {
    let name = spec.api_name();
    let apis = client.get_rest_apis().limit(500).send().await.map_err(|e| CallError::new("list APIs", e))?;
    apis.items()
        .iter()
        .find(|a| a.name() == Some(name.as_str()))
        .and_then(|a| a.id())
        .map(str::to_owned)
        .ok_or(LookupError::NoApi(name))
}

/// The value of `spec`'s producers' key, found by its name (reading it
/// needs `apigateway:GET` on the key).
pub async fn find_key(client: &aws_sdk_apigateway::Client, spec: &CellSpec) -> Result<String, LookupError> {
    let name = spec.producers_name();
    let keys = client
        .get_api_keys()
        .name_query(&name)
        .include_values(true)
        .send()
        .await
        .map_err(|e| CallError::new("list keys", e))?;
    keys.items()
        .iter()
        .find(|k| k.name() == Some(name.as_str()))
        .and_then(|k| k.value())
        .map(str::to_owned)
        .ok_or(LookupError::NoKey(name))
}

/// Why a deployed ingress's part was not found.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The account has no REST API of that name (in this Region).
    #[error("no REST API named {0}")]
    NoApi(String),
    /// The account has no API key of that name.
    #[error("no API key named {0}")]
    NoKey(String),
    /// Listing failed.
    #[error(transparent)]
    Call(#[from] CallError),
}
