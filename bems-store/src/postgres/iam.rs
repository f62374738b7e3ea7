//! RDS IAM database authentication: a SigV4-presigned token as each new
//! connection's password.
//!
//! The token is what `aws rds generate-db-auth-token` prints: the query
//! string of a presigned `GET https://<host>:<port>/?Action=connect&DBUser=<user>`
//! for the service `rds-db`, valid 15 minutes, without the scheme. It is
//! signed locally (no call to AWS) with the credentials of the caller's
//! role, which needs `rds-db:connect` on
//! `arn:aws:rds-db:<region>:<account>:dbuser:<cluster resource id>/<user>`;
//! the database user needs `GRANT rds_iam`. A new one is signed for every
//! connection, so a connection opened after a thaw never carries an
//! expired token (the server checks the token when the connection opens,
//! not afterwards).
//!
//! Signed with `aws-sigv4` and the SDK's credentials rather than
//! `aws-sdk-rds`, whose whole service client would be compiled for this
//! one function (see `docs/store.md`).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;
use futures_util::future::BoxFuture;

use super::connect::{BoxError, PasswordSource};

/// How long a token is valid: RDS's fixed 15 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The service name tokens are signed for.
const SERVICE: &str = "rds-db";

/// A token could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The database user name cannot be put in a token.
    #[error("the database user {0:?} is not a plain name (letters, digits, _ . - @)")]
    User(String),
    /// The credentials could not be loaded.
    #[error("AWS credentials for the RDS IAM token: {0}")]
    Credentials(#[source] aws_credential_types::provider::error::CredentialsError),
    /// Signing failed.
    #[error("signing the RDS IAM token: {0}")]
    Signing(#[source] BoxError),
}

/// The token for `user` at `host:port` in `region`, signed with
/// `credentials` at `at`.
pub fn auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &Credentials,
    at: SystemTime,
) -> Result<String, TokenError> {
    // The user goes into the URL as is: keep it to the characters that
    // need no encoding, which every PostgreSQL role BEMS creates uses.
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b)) {
        return Err(TokenError::User(user.to_owned()));
    }
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| TokenError::Signing(e.into()))?;
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={user}");
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| TokenError::Signing(e.into()))?;
    let (instructions, _signature) =
        sign(request, &params.into()).map_err(|e| TokenError::Signing(e.into()))?.into_parts();
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in instructions.params() {
        query.append_pair(name, value);
    }
    Ok(format!("{host}:{port}/?Action=connect&DBUser={user}&{}", query.finish()))
}

/// Tokens from a credentials provider (the SDK's chain: on Lambda, the
/// function's role).
#[derive(Debug, Clone)]
pub struct RdsIamAuth {
    credentials: SharedCredentialsProvider,
    region: String,
    clock: fn() -> SystemTime,
}

impl RdsIamAuth {
    /// Tokens signed with `credentials` for `region`.
    pub fn new(credentials: SharedCredentialsProvider, region: impl Into<String>) -> RdsIamAuth {
        RdsIamAuth { credentials, region: region.into(), clock: SystemTime::now }
    }

    /// Signing at the times `clock` gives instead of now (tests, and
    /// comparing a token with another tool's).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> RdsIamAuth {
        self.clock = clock;
        self
    }
}

impl PasswordSource for RdsIamAuth {
    fn password<'a>(&'a self, host: &'a str, port: u16, user: &'a str) -> BoxFuture<'a, Result<String, BoxError>> {
        Box::pin(async move {
            let credentials = self.credentials.provide_credentials().await.map_err(TokenError::Credentials)?;
            Ok(auth_token(host, port, user, &self.region, &credentials, (self.clock)())?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const HOST: &str = "db.cluster-x.eu-west-1.rds.amazonaws.com";

    /// The query parameters of `token`.
    fn token_params(token: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        token.split_once('?').map(|(_, q)| form_urlencoded::parse(q.as_bytes()).collect()).unwrap_or_default()
    }

    fn at() -> SystemTime {
        // 2026-12-07T12:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_644_800)
    }

    #[test]
    fn a_token_is_a_presigned_connect_for_the_user_valid_fifteen_minutes() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", Some("token/with+chars=".into()), None, "test");
        let sign = |at| auth_token(HOST, 5432, "bems_writer", "eu-west-1", &credentials, at);
        let token = sign(at()).expect("token");
        assert!(token.starts_with("db.cluster-x.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=bems_writer&"));
        let params = token_params(&token);
        let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_string());
        assert_eq!(get("X-Amz-Algorithm").as_deref(), Some("AWS4-HMAC-SHA256"));
        assert_eq!(get("X-Amz-Credential").as_deref(), Some("AKIDEXAMPLE/20261207/eu-west-1/rds-db/aws4_request"));
        assert_eq!(get("X-Amz-Date").as_deref(), Some("20261207T120000Z"));
        assert_eq!(get("X-Amz-Expires").as_deref(), Some("900"));
        assert_eq!(get("X-Amz-SignedHeaders").as_deref(), Some("host"));
        assert_eq!(get("X-Amz-Security-Token").as_deref(), Some("token/with+chars="));
        assert_eq!(get("X-Amz-Signature").map(|s| s.len()), Some(64));
        assert!(!token.contains("https://") && !token.contains(' ') && !token.contains("&&"));
        // botocore 1.44.8's `generate_db_auth_token` for the same host,
        // user, Region, credentials and (patched) clock: the same
        // parameters and signature, in another order.
        let botocore = "db.cluster-x.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=bems_writer&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261207%2Feu-west-1%2Frds-db%2Faws4_request&X-Amz-Date=20261207T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=token%2Fwith%2Bchars%3D&X-Amz-Signature=ba77a59d4833a56d69e7ebc83b1276beb22af7843cb7c72b5fe2df04b8956591";
        let sorted = |t: &str| {
            let mut p: Vec<(String, String)> =
                token_params(t).into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            p.sort();
            (t.split_once('?').map(|(h, _)| h.to_owned()), p)
        };
        assert_eq!(sorted(&token), sorted(botocore));
        // The same inputs sign the same token; another second another.
        assert_eq!(sign(at()).expect("again"), token);
        assert_ne!(sign(at() + Duration::from_secs(1)).expect("later"), token);
    }

    #[test]
    fn a_user_that_would_need_encoding_is_refused_by_name() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        for user in ["", "a b", "x&DBUser=admin", "é"] {
            let error = auth_token("db", 5432, user, "eu-west-1", &credentials, at()).expect_err(user);
            assert!(matches!(error, TokenError::User(_)), "{user}: {error}");
        }
    }
}
