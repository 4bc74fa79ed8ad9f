//! `VendorRegistry`: vendors register and report their capacity (the report
//! doubles as their heartbeat).

use std::sync::Arc;

use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::vendor_registry_server::VendorRegistry;
use tonic::{Request, Response, Status};

use super::{convert, now_unix_ms, status_of};
use crate::fat::Command;
use crate::store::FatStore;

/// The vendor-facing service.
pub(crate) struct RegistryService<S> {
    store: Arc<S>,
}

impl<S> RegistryService<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl<S: FatStore> VendorRegistry for RegistryService<S> {
    async fn register(
        &self,
        request: Request<pb::RegisterVendorRequest>,
    ) -> Result<Response<pb::RegisterVendorResponse>, Status> {
        let command = convert::register_command(request.into_inner(), now_unix_ms())?;
        let (vendor, address) = (command.vendor.id.clone(), command.vendor.address.clone());
        self.store
            .propose(Command::RegisterVendor(command))
            .await
            .map_err(status_of)?;
        tracing::info!(%vendor, %address, "vendor registered");
        Ok(Response::new(pb::RegisterVendorResponse {}))
    }

    async fn report_capacity(
        &self,
        request: Request<pb::CapacityReport>,
    ) -> Result<Response<pb::CapacityReportResponse>, Status> {
        let command = convert::report_command(request.into_inner(), now_unix_ms())?;
        self.store
            .propose(Command::ReportCapacity(command))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CapacityReportResponse {}))
    }
}
