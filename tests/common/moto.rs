//! A real S3 API server for integration tests: moto in server mode, from
//! PyPI (installed by `scripts/setup-test-clients.sh`), on a free loopback
//! port, with one bucket. The tests read and damage its objects with
//! boto3, a client independent of tideflow's.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every server starts with.
pub const BUCKET: &str = "tideflow-test";

/// A running moto server.
pub struct Moto {
    process: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Moto {
    /// Starts a server, waits until it answers, and creates [`BUCKET`].
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let process = Command::new(super::test_clients_python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let moto = Moto {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not listen within 30 s; install it with scripts/setup-test-clients.sh"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')"));
        moto
    }

    /// The environment a tideflow process needs to use this server.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Runs Python with `s3`, a boto3 client of this server, and returns
    /// what it prints.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{code}\n",
            self.endpoint
        );
        let output = Command::new(super::test_clients_python())
            .args(["-c", &script])
            .output()
            .expect("running boto3");
        assert!(
            output.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Every key under `prefix` in [`BUCKET`], sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let printed = self.boto3(&format!(
            "pages = s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}', Prefix='{prefix}')\nfor page in pages:\n    for item in page.get('Contents', []):\n        print(item['Key'])"
        ));
        let mut keys: Vec<String> = printed.lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// Flips a bit in the middle of the object under `key`.
    pub fn flip_a_bit(&self, key: &str) {
        self.boto3(&format!(
            "body = bytearray(s3.get_object(Bucket='{BUCKET}', Key='{key}')['Body'].read())\nbody[len(body) // 2] ^= 0x40\ns3.put_object(Bucket='{BUCKET}', Key='{key}', Body=bytes(body))"
        ));
    }
}
