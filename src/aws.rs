//! The AWS SDK's configuration, one for both clients (S3 for the lake, Kinesis for the stream):
//! the standard environment and files, and the HTTP client on the binary's one TLS stack.

/// The AWS SDK's HTTP client on rustls/ring (the one TLS stack of this binary).
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The AWS SDK configuration from the standard environment and files, with `http_client`.
pub async fn config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}
