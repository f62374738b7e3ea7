//! Archived months in S3: the [`bems_store::postgres::archive::Target`]
//! `bems store archive --to s3://bucket/prefix` writes to.
//!
//! A file is streamed in parts ([`S3Target::with_part_size`], 32 MiB by
//! default, doubling every 1,000 parts up to S3's 5 GiB: S3 takes at most
//! 10,000 parts, so a file of any size a month makes fits), each sent with
//! its SHA-256, which S3 checks on receipt; a file smaller
//! than one part goes in one `PutObject` with its SHA-256, so S3 reports
//! the whole file's hash back and the archive compares it. Objects take
//! the bucket's default encryption (the cell key, in the template's
//! bucket). An upload given up is aborted, so no parts linger to be
//! billed.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::base64;
use aws_smithy_types::error::display::DisplayErrorContext;
use bems_store::postgres::archive::{Stored, Target, Upload};
use bems_store::postgres::export::Output;
use sha2::{Digest, Sha256};

/// The default part size.
pub const PART_SIZE: usize = 32 << 20;
/// S3's smallest part (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's most parts per upload.
const MAX_PARTS: usize = 10_000;
/// S3's largest part.
const MAX_PART_SIZE: usize = 5 << 30;
/// Parts of one size before the size doubles.
const PARTS_PER_SIZE: usize = 1_000;

/// A bucket and a key prefix.
#[derive(Debug, Clone)]
pub struct S3Target {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

/// An S3 call that failed.
#[derive(Debug, thiserror::Error)]
#[error("S3 {operation} s3://{bucket}/{key}: {detail}")]
pub struct S3Error {
    operation: &'static str,
    bucket: String,
    key: String,
    detail: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Why an `s3://` URL cannot be a target.
#[derive(Debug, thiserror::Error)]
#[error("--to {0}: expected s3://bucket or s3://bucket/prefix")]
pub struct BadUrl(String);

impl S3Target {
    /// The target at `url` (`s3://bucket/prefix`).
    pub fn new(client: aws_sdk_s3::Client, url: &str) -> Result<S3Target, BadUrl> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| BadUrl(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BadUrl(url.to_owned()));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Target { client, bucket: bucket.to_owned(), prefix, part_size: PART_SIZE })
    }

    /// The target at `url` with a client from `config`.
    pub fn from_config(config: &aws_config::SdkConfig, url: &str) -> Result<S3Target, BadUrl> {
        S3Target::new(aws_sdk_s3::Client::new(config), url)
    }

    /// First parts of `bytes` (between [`MIN_PART_SIZE`] and S3's 5 GiB).
    pub fn with_part_size(mut self, bytes: usize) -> S3Target {
        self.part_size = bytes.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        self
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn failed<E>(&self, operation: &'static str, key: &str) -> impl FnOnce(E) -> std::io::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let (bucket, key) = (self.bucket.clone(), key.to_owned());
        move |e| {
            let detail = DisplayErrorContext(&e).to_string();
            std::io::Error::other(S3Error { operation, bucket, key, detail, source: Box::new(e) })
        }
    }
}

/// What identifies a write: the version id, else the ETag (without the
/// quotes some answers put around it). "null" is the version id of every
/// object written while versioning is off or suspended, so not one.
fn receipt(version_id: Option<&str>, e_tag: Option<&str>) -> Option<String> {
    version_id.filter(|v| *v != "null").or(e_tag).map(|r| r.trim_matches('"').to_owned())
}

fn sha256_base64(bytes: &[u8]) -> String {
    base64::encode(Sha256::digest(bytes))
}

/// A file on its way to S3: parts are sent as they fill.
#[derive(Debug)]
pub struct S3Upload {
    target: S3Target,
    key: String,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl S3Upload {
    /// The size of the next part: the first size, doubled every
    /// [`PARTS_PER_SIZE`] parts (up to 5 GiB), so that 10,000 parts hold
    /// 2^10 − 1 thousand first-size parts: 32 PiB of 32 MiB parts.
    fn part_size(&self) -> usize {
        let doublings = u32::try_from(self.parts.len() / PARTS_PER_SIZE).unwrap_or(u32::MAX);
        self.target.part_size.checked_shl(doublings).unwrap_or(MAX_PART_SIZE).min(MAX_PART_SIZE)
    }

    /// Sends the first `len` buffered bytes as the next part.
    async fn send_part(&mut self, len: usize) -> std::io::Result<()> {
        let t = &self.target;
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = t
                    .client
                    .create_multipart_upload()
                    .bucket(&t.bucket)
                    .key(&self.key)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .send()
                    .await
                    .map_err(t.failed("CreateMultipartUpload", &self.key))?;
                let id = created.upload_id().ok_or_else(|| {
                    std::io::Error::other(format!(
                        "s3://{}/{}: CreateMultipartUpload gave no upload id",
                        t.bucket, self.key
                    ))
                })?;
                self.upload_id = Some(id.to_owned());
                id.to_owned()
            }
        };
        if self.parts.len() >= MAX_PARTS {
            return Err(std::io::Error::other(format!(
                "s3://{}/{}: more than S3's {MAX_PARTS} parts; archive with a larger --part-size-mib",
                t.bucket, self.key
            )));
        }
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let part: Vec<u8> = self.buffer.drain(..len).collect();
        let checksum = sha256_base64(&part);
        let sent = t
            .client
            .upload_part()
            .bucket(&t.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .part_number(number)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(t.failed("UploadPart", &self.key))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .checksum_sha256(checksum)
                .build(),
        );
        Ok(())
    }
}

impl Output for S3Upload {
    async fn write(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.buffer.extend_from_slice(&chunk);
        while self.buffer.len() >= self.part_size() {
            self.send_part(self.part_size()).await?;
        }
        Ok(())
    }
}

impl Upload for S3Upload {
    /// The receipt is the object's version id in a versioned bucket (the
    /// template's), else its ETag.
    async fn finish(mut self) -> std::io::Result<Option<String>> {
        let t = self.target.clone();
        let Some(upload_id) = self.upload_id.clone() else {
            let body = std::mem::take(&mut self.buffer);
            let put = t
                .client
                .put_object()
                .bucket(&t.bucket)
                .key(&self.key)
                .checksum_sha256(sha256_base64(&body))
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(t.failed("PutObject", &self.key))?;
            return Ok(receipt(put.version_id(), put.e_tag()));
        };
        let completed = async {
            if !self.buffer.is_empty() {
                self.send_part(self.buffer.len()).await?;
            }
            let parts = CompletedMultipartUpload::builder().set_parts(Some(std::mem::take(&mut self.parts))).build();
            t.client
                .complete_multipart_upload()
                .bucket(&t.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .multipart_upload(parts)
                .send()
                .await
                .map_err(t.failed("CompleteMultipartUpload", &self.key))
        }
        .await;
        match completed {
            Ok(done) => Ok(receipt(done.version_id(), done.e_tag())),
            Err(e) => {
                // No parts left behind to bill.
                let _ = self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(self) -> std::io::Result<()> {
        let Some(id) = self.upload_id else { return Ok(()) };
        let t = &self.target;
        t.client
            .abort_multipart_upload()
            .bucket(&t.bucket)
            .key(&self.key)
            .upload_id(id)
            .send()
            .await
            .map(drop)
            .map_err(t.failed("AbortMultipartUpload", &self.key))
    }
}

impl Target for S3Target {
    type Upload = S3Upload;

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object(key))
    }

    async fn create(&self, key: &str) -> std::io::Result<S3Upload> {
        Ok(S3Upload {
            target: self.clone(),
            key: self.object(key),
            buffer: Vec::with_capacity(self.part_size),
            upload_id: None,
            parts: Vec::new(),
        })
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> std::io::Result<()> {
        let mut upload = self.create(key).await?;
        upload.write(body).await?;
        upload.finish().await.map(drop)
    }

    async fn stored(&self, key: &str) -> std::io::Result<Stored> {
        let object = self.object(key);
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(self.failed("HeadObject", &object))?;
        // A file sent in parts has a hash of its parts' hashes, not of
        // the file: S3 says so by the checksum's type, and the ETag of
        // any multipart object ends in "-<parts>".
        let parts = head.checksum_type() == Some(&ChecksumType::Composite)
            || head.e_tag().is_some_and(|tag| tag.trim_matches('"').contains('-'));
        let sha256 = head
            .checksum_sha256()
            .filter(|_| !parts)
            .and_then(|b64| base64::decode(b64).ok())
            .filter(|digest| digest.len() == 32)
            .map(|digest| digest.iter().map(|b| format!("{b:02x}")).collect());
        let bytes = head
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| std::io::Error::other(format!("s3://{}/{object}: HeadObject gave no size", self.bucket)))?;
        Ok(Stored { bytes, sha256, receipt: receipt(head.version_id(), head.e_tag()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> aws_sdk_s3::Client {
        let config =
            aws_sdk_s3::Config::builder().behavior_version(aws_sdk_s3::config::BehaviorVersion::latest()).build();
        aws_sdk_s3::Client::from_conf(config)
    }

    #[test]
    fn urls_name_a_bucket_and_an_optional_prefix() {
        let t = S3Target::new(client(), "s3://archive-bucket/bems/prod/").expect("url");
        assert_eq!(t.location("a/b.csv.gz"), "s3://archive-bucket/bems/prod/a/b.csv.gz");
        let t = S3Target::new(client(), "s3://archive-bucket").expect("url");
        assert_eq!(t.location("a/b.csv.gz"), "s3://archive-bucket/a/b.csv.gz");
        for bad in ["archive-bucket/x", "s3://", "s3:///x", "/tmp/x"] {
            let e = S3Target::new(client(), bad).expect_err(bad);
            assert!(e.to_string().contains("expected s3://bucket"), "{e}");
        }
        assert_eq!(S3Target::new(client(), "s3://b").expect("url").with_part_size(1).part_size, MIN_PART_SIZE);
    }

    #[test]
    fn parts_grow_so_that_ten_thousand_hold_any_month() {
        let target = S3Target::new(client(), "s3://b").expect("url");
        let mut upload = S3Upload { target, key: "k".into(), buffer: Vec::new(), upload_id: None, parts: Vec::new() };
        assert_eq!(upload.part_size(), PART_SIZE);
        let mut total = 0_u128;
        for n in 0..MAX_PARTS {
            if n == 1_000 {
                assert_eq!(upload.part_size(), 2 * PART_SIZE);
            }
            total += upload.part_size() as u128;
            upload.parts.push(CompletedPart::builder().part_number(1).build());
        }
        assert_eq!(upload.part_size(), MAX_PART_SIZE, "never above S3's largest part");
        // 1,000 parts each of 32 MiB, 64 MiB, ... 5 GiB: far more than a month's 1 TB.
        assert!(total > 10 << 40, "{total}");
    }
}
