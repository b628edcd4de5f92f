//! A moto server (the AWS emulator from PyPI) on a free loopback port, for S3 and Kinesis
//! through the real AWS SDK. Stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// moto with its Kinesis data calls made atomic (see `moto_server.py`: moto itself can
    /// store two concurrently put records under one sequence number, losing one).
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// The same on `port` (0: one the system picks, read back from moto's startup line, so no
    /// other test can take it between the choice and the bind).
    pub fn start_on(port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_server.py");
        Self::spawn(Command::new("python3").arg(script), port)
    }

    /// moto as it is, concurrency defects included.
    pub fn start_unlocked() -> Self {
        Self::spawn(&mut Command::new("moto_server"), 0)
    }

    fn spawn(cmd: &mut Command, port: u16) -> Self {
        let mut child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server not found: install it with pip install 'moto[server]' (make test does)");
        // The server's log: its startup line names the port; the rest is drained so that the
        // server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("moto's stderr");
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                    if let Ok(p) = rest.trim().parse::<u16>() {
                        let _ = tx.send(p);
                    }
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not start (port {port})");
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The environment a totes-cdc process needs to use this emulator.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// An S3 client of the real SDK against this emulator.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .force_path_style(true)
            .http_client(totes_cdc::aws::http_client())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Moto {
    /// A Kinesis client of the real SDK against this emulator.
    pub async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        let creds =
            aws_sdk_kinesis::config::Credentials::new("testing", "testing", None, None, "test");
        let conf = aws_sdk_kinesis::config::Builder::new()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .http_client(totes_cdc::aws::http_client())
            .build();
        aws_sdk_kinesis::Client::from_conf(conf)
    }

    /// Creates a stream and waits until it is active.
    pub async fn create_stream(&self, name: &str, shards: i32) {
        let k = self.kinesis().await;
        k.create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .expect("create stream");
    }

    /// Every record of the stream, read with boto3 (a plain client, not totes-cdc's).
    pub fn read_all(&self, stream: &str) -> Vec<serde_json::Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/read_kinesis.py");
        let out = Command::new("python3")
            .args([script, &self.endpoint(), stream])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("reader line"))
            .collect()
    }
}
