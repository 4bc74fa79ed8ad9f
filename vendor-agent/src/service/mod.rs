//! The vendor's gRPC service (`offsite.vendor.Vendor`): a thin adapter over
//! the [`Vendor`] core. Each call reads the caller's identity from its
//! certificate, converts the wire request to domain types ([`convert`]),
//! calls the core, converts the answer back, and turns every error into a
//! `tonic::Status` in one place ([`status`]).

mod admin;
mod convert;
mod status;

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use offsite_identity::{require_role, Role};
use offsite_proto::limits::MAX_PROBE_BYTES;
use offsite_proto::pb::common::DataFrame;
use offsite_proto::pb::vendor::{
    vendor_server, AuditRequest, AuditResponse, DeleteRequest, DeleteResponse, FetchRequest,
    ProbeRequest, ProbeResponse, StoreFrame, StoreResponse,
};
use offsite_proto::{PortionId, TenantId};
use tonic::{Request, Response, Status, Streaming};

use crate::vendor::{Vendor, VendorError};

pub(crate) use admin::AdminService;

/// The tenant a call is limited to: the name of a tenant certificate, or
/// none for another allowed role (a vendor forwarding a store).
fn caller_tenant<T>(request: &Request<T>, allowed: &[Role]) -> Result<Option<TenantId>, Status> {
    require_role(request, allowed)?.tenant()
}

/// Only a tenant certificate, and only for the tenant it names.
fn own_portion<T>(request: &Request<T>, named: &str, what: &str) -> Result<(), Status> {
    let Some(caller) = caller_tenant(request, &[Role::Tenant])? else {
        return Err(Status::permission_denied(format!(
            "{what} needs a tenant certificate"
        )));
    };
    if caller.as_str() == named {
        Ok(())
    } else {
        Err(VendorError::NotYourTenant {
            caller,
            named: named.to_string(),
        }
        .into())
    }
}

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub(crate) struct VendorService {
    vendor: Arc<Vendor>,
}

impl VendorService {
    pub fn new(vendor: Arc<Vendor>) -> Self {
        Self { vendor }
    }
}

#[tonic::async_trait]
impl vendor_server::Vendor for VendorService {
    async fn probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        require_role(&request, &[Role::Tenant, Role::Vendor, Role::Admin])?;
        let payload = request.into_inner().payload;
        if payload.len() > MAX_PROBE_BYTES {
            return Err(VendorError::ProbeTooLarge {
                len: payload.len(),
                max: MAX_PROBE_BYTES,
            }
            .into());
        }
        Ok(Response::new(ProbeResponse {
            vendor_id: self.vendor.id().to_string(),
            payload,
            free_bytes: self.vendor.free_bytes().await,
        }))
    }

    async fn store(
        &self,
        request: Request<Streaming<StoreFrame>>,
    ) -> Result<Response<StoreResponse>, Status> {
        // A tenant stores its own portions; a vendor forwards anyone's.
        let owner = caller_tenant(&request, &[Role::Tenant, Role::Vendor])?;
        let vendor = Arc::clone(&self.vendor);
        let mut frames = request.into_inner();
        // The upload runs in its own task so that a caller hanging up cannot
        // cancel it half-way: it always finishes or cleans up its pieces.
        let task = tokio::spawn(async move {
            let header = convert::read_header(&mut frames, vendor.idle_timeout()).await?;
            if let Some(caller) = owner.filter(|caller| *caller != header.tenant) {
                return Err(VendorError::NotYourTenant {
                    caller,
                    named: header.tenant.to_string(),
                });
            }
            vendor.receive(header, convert::chunks(frames)).await
        });
        match task.await {
            Ok(result) => Ok(Response::new(result?.into())),
            Err(join) => Err(VendorError::Internal(format!("store task failed: {join}")).into()),
        }
    }

    type FetchStream = BoxStream<'static, Result<DataFrame, Status>>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        own_portion(&request, &request.get_ref().tenant_id, "fetch")?;
        let read = self.vendor.read(request.into_inner().try_into()?)?;
        let frames = read.map(|chunk| chunk.map(|data| DataFrame { data }).map_err(Status::from));
        Ok(Response::new(frames.boxed()))
    }

    async fn audit(
        &self,
        request: Request<AuditRequest>,
    ) -> Result<Response<AuditResponse>, Status> {
        require_role(&request, &[Role::Coordinator])?;
        let req = request.into_inner();
        if req.length > offsite_proto::audit::MAX_AUDIT_LENGTH {
            return Err(Status::invalid_argument(format!(
                "audit length {} is more than the {} bytes an audit asks for",
                req.length,
                offsite_proto::audit::MAX_AUDIT_LENGTH
            )));
        }
        let tenant = TenantId::new(req.tenant_id).map_err(VendorError::from)?;
        let portion = PortionId::parse(&req.portion_id).map_err(VendorError::from)?;
        let proof = self
            .vendor
            .audit(tenant, portion, req.offset, req.length)
            .await?;
        Ok(Response::new(AuditResponse { proof }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        own_portion(&request, &request.get_ref().tenant_id, "delete")?;
        let delete = request.into_inner().try_into()?;
        let vendor = Arc::clone(&self.vendor);
        // Like a store, a delete runs to its end even if the caller hangs up.
        let task = tokio::spawn(async move { vendor.delete(delete).await });
        match task.await {
            Ok(result) => Ok(Response::new(DeleteResponse { existed: result? })),
            Err(join) => Err(VendorError::Internal(format!("delete task failed: {join}")).into()),
        }
    }
}
