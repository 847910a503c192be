//! [`KeySource`] backed by the attestation-agent daemon: GetResource over
//! ttrpc on its unix socket. The agent attests to the KBS and decrypts the
//! resource with the TEE key; this process only ever sees the released bytes.
//!
//! Never logs or formats resource bytes; a broken connection is retried once
//! on a fresh connection, never more.

use std::sync::Mutex;
use std::time::Duration;

use protos::attestation_agent::GetResourceRequest;
use protos::attestation_agent_ttrpc::AttestationAgentServiceClient;
use zeroize::Zeroizing;

use super::{KeySource, KeySourceError, ResourceUri, Secret};

/// guest-components' default attestation-agent socket.
pub const DEFAULT_AA_SOCKET: &str = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";

/// Asks the attestation-agent at `socket` (`unix:///path`) for resources.
pub struct AaKeySource {
    socket: String,
    timeout: Duration,
    client: Mutex<Option<AttestationAgentServiceClient>>,
}

impl std::fmt::Debug for AaKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AaKeySource").field("socket", &self.socket).field("timeout", &self.timeout).finish()
    }
}

impl AaKeySource {
    pub fn new(socket: impl Into<String>, timeout: Duration) -> Self {
        Self { socket: socket.into(), timeout, client: Mutex::new(None) }
    }

    async fn client(&self, uri: &ResourceUri) -> Result<AttestationAgentServiceClient, KeySourceError> {
        if let Some(c) = self.client.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let connect = ttrpc::r#async::Client::connect(&self.socket);
        let client = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(c)) => AttestationAgentServiceClient::new(c),
            Ok(Err(e)) => {
                return Err(unavailable(
                    uri,
                    format!("cannot connect to the attestation-agent at {}: {e}", self.socket),
                ))
            }
            Err(_) => {
                return Err(unavailable(
                    uri,
                    format!("attestation-agent at {} did not accept within {:?}", self.socket, self.timeout),
                ))
            }
        };
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn unavailable(uri: &ResourceUri, detail: String) -> KeySourceError {
    KeySourceError::Unavailable { uri: uri.to_string(), detail }
}

#[async_trait::async_trait]
impl KeySource for AaKeySource {
    async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError> {
        let req = GetResourceRequest { ResourcePath: format!("kbs:///{}", uri.resource_path()), ..Default::default() };
        for attempt in 0..2 {
            let client = self.client(uri).await?;
            let ctx = ttrpc::context::with_timeout(self.timeout.as_nanos().min(i64::MAX as u128) as i64);
            match client.get_resource(ctx, &req).await {
                Ok(resp) => return Ok(Zeroizing::new(resp.Resource)),
                Err(ttrpc::Error::RpcStatus(status)) => {
                    let detail = status.message().to_owned();
                    return Err(match status.code() {
                        ttrpc::Code::PERMISSION_DENIED if detail.contains("ResourceNotFound") => {
                            KeySourceError::NotFound { uri: uri.to_string(), detail }
                        }
                        ttrpc::Code::PERMISSION_DENIED => KeySourceError::Denied { uri: uri.to_string(), detail },
                        _ => unavailable(uri, detail),
                    });
                }
                Err(err) if attempt == 0 => {
                    tracing::warn!(socket = %self.socket, %err, "attestation-agent connection failed; reconnecting once");
                    self.forget_client();
                }
                Err(err) => return Err(unavailable(uri, format!("attestation-agent at {}: {err}", self.socket))),
            }
        }
        unreachable!("the second attempt returns")
    }
}
