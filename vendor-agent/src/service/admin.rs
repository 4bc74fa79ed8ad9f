//! `offsite.vendor.VendorAdmin`: the vendor's own admin calls on its gRPC
//! port, for `offsite-vendor stores` while the agent runs (the agent holds
//! the local FAT's lock). Only the vendor's own certificate may call them.

use std::sync::Arc;

use offsite_identity::{require_role, Role};
use offsite_proto::pb::vendor::{
    vendor_admin_server, ListStoresRequest, ListStoresResponse, StoreInfo,
};
use tonic::{Request, Response, Status};

use crate::vendor::Vendor;

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub(crate) struct AdminService {
    vendor: Arc<Vendor>,
}

impl AdminService {
    pub fn new(vendor: Arc<Vendor>) -> Self {
        Self { vendor }
    }
}

/// Only this vendor's own certificate.
fn require_self<T>(request: &Request<T>, vendor: &Vendor) -> Result<(), Status> {
    let caller = require_role(request, &[Role::Vendor])?;
    if caller.name == vendor.id().as_str() {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the vendor admin calls take vendor {}'s own certificate, not {}'s",
            vendor.id(),
            caller.name
        )))
    }
}

#[tonic::async_trait]
impl vendor_admin_server::VendorAdmin for AdminService {
    async fn list_stores(
        &self,
        request: Request<ListStoresRequest>,
    ) -> Result<Response<ListStoresResponse>, Status> {
        require_self(&request, &self.vendor)?;
        let stores = self
            .vendor
            .store_usage()
            .await
            .map_err(Status::from)?
            .into_iter()
            .map(|u| StoreInfo {
                index: u.index,
                name: u.name,
                state: u.state.into(),
                pieces: u.pieces,
                bytes: u.bytes,
                offered_bytes: u.offered_bytes,
                free_bytes: u.free_bytes,
            })
            .collect();
        Ok(Response::new(ListStoresResponse { stores }))
    }
}
