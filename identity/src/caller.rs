//! The tenant or vendor a call comes from, read from its verified client
//! certificate: the only source of a tenant or vendor id on a server, never
//! a field of the request.

use offsite_proto::{TenantId, VendorId};
use tonic::{Request, Status};

use crate::{require_role, PeerIdentity, Role};

impl PeerIdentity {
    /// The tenant a tenant certificate names; `None` for another role.
    pub fn tenant(&self) -> Result<Option<TenantId>, Status> {
        if self.role != Role::Tenant {
            return Ok(None);
        }
        TenantId::new(self.name.clone()).map(Some).map_err(|e| {
            Status::unauthenticated(format!(
                "the tenant certificate names no valid tenant id: {e}"
            ))
        })
    }
}

/// The calling tenant: the name of the caller's tenant certificate. Any
/// other certificate is refused with PermissionDenied.
pub fn require_tenant<T>(request: &Request<T>) -> Result<TenantId, Status> {
    let peer = require_role(request, &[Role::Tenant])?;
    peer.tenant()?
        .ok_or_else(|| Status::permission_denied("this call needs a tenant certificate"))
}

/// The calling vendor: the name of the caller's vendor certificate. Any
/// other certificate is refused with PermissionDenied.
pub fn require_vendor<T>(request: &Request<T>) -> Result<VendorId, Status> {
    let peer = require_role(request, &[Role::Vendor])?;
    VendorId::new(peer.name).map_err(|e| {
        Status::unauthenticated(format!(
            "the vendor certificate names no valid vendor id: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tenant_certificate_names_a_tenant() {
        let tenant = PeerIdentity::new(Role::Tenant, "acme").unwrap();
        assert_eq!(
            tenant.tenant().unwrap(),
            Some(TenantId::new("acme").unwrap())
        );
        let vendor = PeerIdentity::new(Role::Vendor, "acme").unwrap();
        assert_eq!(vendor.tenant().unwrap(), None);
    }

    #[test]
    fn a_call_without_a_certificate_names_no_one() {
        let request = Request::new(());
        assert_eq!(
            require_tenant(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            require_vendor(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
