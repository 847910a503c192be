//! The ttrpc client of the confidential data hub's `ImagePullService`, as
//! kata's agent calls it: `PullImage{image_url, bundle_path}` on the hub's unix
//! socket, with `agent.image_pull_timeout` as the call's deadline. One
//! connection per pull, so a restarted hub is simply reconnected to.

use std::time::Duration;

use super::{ImagePuller, PullError};

pub struct CdhPuller {
    addr: String,
    timeout: Duration,
}

impl CdhPuller {
    /// `addr` as ttrpc takes it (`unix:///run/confidential-containers/cdh.sock`).
    pub fn new(addr: impl Into<String>, timeout: Duration) -> CdhPuller {
        CdhPuller { addr: addr.into(), timeout }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

fn code_name(code: ttrpc::Code) -> String {
    format!("{code:?}")
}

#[async_trait::async_trait]
impl ImagePuller for CdhPuller {
    async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<String, PullError> {
        let unreachable = |e: String| PullError {
            code: ttrpc::Code::UNAVAILABLE,
            message: format!("the confidential data hub at {} is not reachable: {e}", self.addr),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let client = tokio::time::timeout_at(deadline, ttrpc::r#async::Client::connect(&self.addr))
            .await
            .map_err(|_| unreachable(format!("connecting took longer than {:?}", self.timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        let client = protos::cdh_ttrpc::ImagePullServiceClient::new(client);
        let req = protos::cdh::ImagePullRequest {
            image_url: image_url.to_owned(),
            bundle_path: bundle_path.to_owned(),
            ..Default::default()
        };
        let nanos = self.timeout.as_nanos().min(i64::MAX as u128) as i64;
        let answer = tokio::time::timeout_at(
            deadline + Duration::from_millis(200),
            client.pull_image(ttrpc::context::with_timeout(nanos), &req),
        )
        .await;
        match answer {
            Ok(Ok(resp)) => Ok(resp.manifest_digest),
            Ok(Err(ttrpc::Error::RpcStatus(s))) => Err(PullError {
                code: s.code(),
                message: format!("the confidential data hub answered {}: {}", code_name(s.code()), s.message()),
            }),
            // ttrpc 0.10 reports its own deadline as Others("Request deadline elapsed").
            Ok(Err(e)) if e.to_string().contains("deadline elapsed") => Err(PullError {
                code: ttrpc::Code::DEADLINE_EXCEEDED,
                message: format!(
                    "no answer from the confidential data hub within {:?} (agent.image_pull_timeout): {e}",
                    self.timeout
                ),
            }),
            Ok(Err(e)) => Err(PullError {
                code: ttrpc::Code::UNAVAILABLE,
                message: format!("the confidential data hub at {} failed: {e}", self.addr),
            }),
            Err(_) => Err(PullError {
                code: ttrpc::Code::DEADLINE_EXCEEDED,
                message: format!(
                    "no answer from the confidential data hub within {:?} (agent.image_pull_timeout)",
                    self.timeout
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_unavailable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}", dir.path().join("cdh.sock").display());
        let e = CdhPuller::new(&addr, Duration::from_secs(5)).pull_image("r/i:t", "/run/x").await.unwrap_err();
        assert_eq!(e.code, ttrpc::Code::UNAVAILABLE);
        assert!(e.message.contains(&addr) && e.message.contains("not reachable"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_hub_that_never_answers_hits_the_pull_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdh.sock");
        // A real listener that accepts and then says nothing.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let addr = format!("unix://{}", path.display());
        let t0 = std::time::Instant::now();
        let e = CdhPuller::new(&addr, Duration::from_millis(300)).pull_image("r/i:t", "/run/x").await.unwrap_err();
        assert_eq!(e.code, ttrpc::Code::DEADLINE_EXCEEDED, "{}", e.message);
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(held.join());
    }
}
