//! S3 backend (AWS or any S3-compatible endpoint) through `aws-sdk-s3`, with static
//! credentials and the rustls (ring) HTTP client; no `aws-config`, no environment lookups.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_smithy_http_client::tls;
use bytes::Bytes;

use super::MediaError;
use super::storage::{CACHE_CONTROL, ObjectMeta, Storage, is_valid_key};

/// Settings of an [`S3Storage`]; the fields mirror [`super::Backend::S3`]. `Debug` redacts the
/// secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL of an S3-compatible service (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing (`{endpoint}/{bucket}/{key}`) instead of virtual-hosted style.
    pub path_style: bool,
    /// Base URL clients reach objects under; derived from the other fields when `None`.
    pub public_base_url: Option<String>,
    /// Create the bucket when it does not exist.
    pub create_bucket: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("public_base_url", &self.public_base_url)
            .field("create_bucket", &self.create_bucket)
            .finish()
    }
}

impl S3Settings {
    /// The base URL of objects: `public_base_url` if set; else `{endpoint}/{bucket}` with
    /// path-style, `{scheme}://{bucket}.{endpoint host}` without; else, for AWS,
    /// `https://{bucket}.s3.{region}.amazonaws.com`.
    #[must_use]
    pub fn derived_base_url(&self) -> String {
        if let Some(u) = &self.public_base_url {
            return u.trim_end_matches('/').to_owned();
        }
        match &self.endpoint {
            Some(ep) => {
                let ep = ep.trim_end_matches('/');
                if self.path_style {
                    format!("{ep}/{}", self.bucket)
                } else if let Some(i) = ep.find("://") {
                    format!("{}{}.{}", &ep[..i + 3], self.bucket, &ep[i + 3..])
                } else {
                    format!("https://{}.{ep}", self.bucket)
                }
            }
            None => format!("https://{}.s3.{}.amazonaws.com", self.bucket, self.region),
        }
    }
}

/// Objects in an S3 bucket. Clients fetch them from the bucket (or a CDN in front of it) at
/// [`S3Settings::derived_base_url`]; making them readable there (bucket policy) is
/// deployment work, this type never sets ACLs.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    base_url: String,
}

fn sdk_err<E: std::error::Error + 'static>(what: &str, e: &E) -> MediaError {
    MediaError::Storage(format!("{what}: {}", DisplayErrorContext(e)))
}

impl S3Storage {
    /// Builds the client, then checks the bucket with `HeadBucket`, creating it if it is missing
    /// and `create_bucket` is set.
    ///
    /// # Errors
    /// [`MediaError::Storage`] when the bucket is unreachable, missing (and not to be created) or
    /// cannot be created.
    pub async fn new(settings: &S3Settings) -> Result<S3Storage, MediaError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(
                settings.access_key.clone(),
                settings.secret_key.clone(),
                None,
                None,
                "instar-static",
            ))
            .force_path_style(settings.path_style)
            .http_client(http)
            // Checksums only where the API requires them: the broadest compatibility with
            // S3-compatible servers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .operation_timeout(Duration::from_secs(180))
                    .build(),
            );
        if let Some(ep) = &settings.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        let client = aws_sdk_s3::Client::from_conf(b.build());
        let storage = S3Storage {
            client,
            bucket: settings.bucket.clone(),
            base_url: settings.derived_base_url(),
        };
        storage.ensure_bucket(settings).await?;
        Ok(storage)
    }

    async fn ensure_bucket(&self, settings: &S3Settings) -> Result<(), MediaError> {
        let head = self.client.head_bucket().bucket(&self.bucket).send().await;
        let head_err = match head {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !settings.create_bucket {
            return Err(sdk_err(
                &format!("bucket {} is not reachable", self.bucket),
                &head_err,
            ));
        }
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if settings.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(settings.region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => {
                // A bucket made by us exists to serve these objects at their public URLs.
                if let Err(e) = self.allow_public_read().await {
                    tracing::warn!(
                        bucket = %self.bucket,
                        error = %e,
                        "media: created the bucket but could not make its objects publicly \
                         readable; object URLs will answer 403 until a bucket policy allows it"
                    );
                }
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err(
                &format!("cannot create bucket {}", self.bucket),
                &e,
            )),
        }
    }

    /// Puts a bucket policy that lets anyone `GetObject` (nothing else), which is what the
    /// URLs handed to clients need. Called once when [`S3Storage::new`] creates the bucket; for
    /// an existing bucket, configure it in the deployment (or call this). Fails where public
    /// policies are blocked (AWS "Block Public Access").
    ///
    /// # Errors
    /// [`MediaError::Storage`] when the policy cannot be set.
    pub async fn allow_public_read(&self) -> Result<(), MediaError> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "PublicReadObjects",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{}/*", self.bucket),
            }],
        });
        self.client
            .put_bucket_policy()
            .bucket(&self.bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err(&format!("cannot set the policy of {}", self.bucket), &e))
    }

    /// The SDK client, for callers that need more than the [`Storage`] trait (tests list the
    /// bucket with it).
    #[must_use]
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn check(&self) -> Result<(), MediaError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| MediaError::Storage(format!("bucket {}: {e}", self.bucket)))
    }

    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), MediaError> {
        if !is_valid_key(key) {
            return Err(MediaError::Storage(format!("invalid key {key:?}")));
        }
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(&meta.content_type)
            .cache_control(CACHE_CONTROL)
            .body(ByteStream::from(body));
        if let Some(cd) = &meta.content_disposition {
            req = req.content_disposition(cd);
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err(&format!("cannot store {key}"), &e))
    }

    async fn get(&self, key: &str, max: usize) -> Result<Bytes, MediaError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("cannot read {key}"), &e))?;
        if out.content_length().is_some_and(|n| n > max as i64) {
            return Err(MediaError::Storage(format!("{key} is over {max} bytes")));
        }
        let mut body = out.body;
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| MediaError::Storage(format!("cannot read {key}: {e}")))?
        {
            if buf.len() + chunk.len() > max {
                return Err(MediaError::Storage(format!("{key} is over {max} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err(&format!("cannot delete {key}"), &e))
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: None,
            region: "us-east-2".into(),
            bucket: "b".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            path_style: false,
            public_base_url: None,
            create_bucket: false,
        }
    }

    #[test]
    fn base_urls() {
        let mut s = settings();
        assert_eq!(s.derived_base_url(), "https://b.s3.us-east-2.amazonaws.com");
        s.endpoint = Some("http://127.0.0.1:9000/".into());
        s.path_style = true;
        assert_eq!(s.derived_base_url(), "http://127.0.0.1:9000/b");
        s.path_style = false;
        assert_eq!(s.derived_base_url(), "http://b.127.0.0.1:9000");
        s.public_base_url = Some("https://cdn.example/m/".into());
        assert_eq!(s.derived_base_url(), "https://cdn.example/m");
    }
}
