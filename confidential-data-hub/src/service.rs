//! The ttrpc services of guest-components' api package, as thin handlers over
//! [`Hub`]: decode, call, map the error to a status. SecureMount answers
//! UNIMPLEMENTED, naming the method. Never panics on a
//! request and never echoes resource bytes into logs.

use std::sync::Arc;

use async_trait::async_trait;
use protos::cdh::{
    GetResourceRequest, GetResourceResponse, ImagePullRequest, ImagePullResponse, SecureMountRequest,
    SecureMountResponse, UnsealSecretInput, UnsealSecretOutput,
};
use protos::cdh_ttrpc::{
    create_get_resource_service, create_image_pull_service, create_sealed_secret_service, create_secure_mount_service,
    GetResourceService, ImagePullService, SealedSecretService, SecureMountService,
};
use ttrpc::r#async::TtrpcContext;

use crate::hub::{Hub, HubError};

#[derive(Clone)]
pub struct Service {
    hub: Arc<Hub>,
}

impl Service {
    pub fn new(hub: Arc<Hub>) -> Self {
        Service { hub }
    }
}

fn status(err: HubError) -> ttrpc::Error {
    tracing::warn!(code = ?err.code, error = %err.message, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(err.code, err.message))
}

fn unimplemented(method: &str) -> ttrpc::Error {
    status(HubError {
        code: ttrpc::Code::UNIMPLEMENTED,
        message: format!("{method} is not implemented by this confidential-data-hub"),
    })
}

#[async_trait]
impl ImagePullService for Service {
    async fn pull_image(&self, _: &TtrpcContext, req: ImagePullRequest) -> ttrpc::Result<ImagePullResponse> {
        tracing::info!(image = %req.image_url, bundle = %req.bundle_path, "PullImage");
        let pulled = self.hub.pull_image(&req.image_url, &req.bundle_path).await.map_err(status)?;
        Ok(ImagePullResponse { manifest_digest: pulled.manifest_digest.to_string(), ..Default::default() })
    }
}

#[async_trait]
impl GetResourceService for Service {
    async fn get_resource(&self, _: &TtrpcContext, req: GetResourceRequest) -> ttrpc::Result<GetResourceResponse> {
        tracing::info!(resource = %req.ResourcePath, "GetResource");
        let secret = self.hub.get_resource(&req.ResourcePath).await.map_err(status)?;
        Ok(GetResourceResponse { Resource: secret.to_vec(), ..Default::default() })
    }
}

#[async_trait]
impl SealedSecretService for Service {
    async fn unseal_secret(&self, _: &TtrpcContext, req: UnsealSecretInput) -> ttrpc::Result<UnsealSecretOutput> {
        tracing::info!(len = req.secret.len(), "UnsealSecret");
        let secret = self.hub.unseal_secret(&req.secret).await.map_err(status)?;
        Ok(UnsealSecretOutput { plaintext: secret.to_vec(), ..Default::default() })
    }
}

#[async_trait]
impl SecureMountService for Service {
    async fn secure_mount(&self, _: &TtrpcContext, _: SecureMountRequest) -> ttrpc::Result<SecureMountResponse> {
        Err(unimplemented("api.SecureMountService/SecureMount"))
    }
}

/// Every service of the api package, ready to register on a ttrpc server.
pub fn services(hub: Arc<Hub>) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    let svc = Arc::new(Service::new(hub));
    let mut all = std::collections::HashMap::new();
    all.extend(create_image_pull_service(svc.clone()));
    all.extend(create_get_resource_service(svc.clone()));
    all.extend(create_sealed_secret_service(svc.clone()));
    all.extend(create_secure_mount_service(svc));
    all
}
