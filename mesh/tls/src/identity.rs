//! Identities: a process of the mesh is the URI SAN of its certificate,
//! `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`, `<name>` being its mesh-config name
//! (`order`, `gateway`).

use std::fmt;

/// A process's identity in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The trust domain (`weft.local`).
    pub trust_domain: String,
    /// The namespace (`default`).
    pub namespace: String,
    /// The process's mesh-config name (`order`).
    pub name: String,
}

/// A certificate or URI that does not carry a mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate could not be parsed.
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
    /// No `spiffe://` URI SAN in the certificate.
    #[error("the certificate has no spiffe:// URI SAN")]
    NoUri,
    /// A URI not of the form `spiffe://<domain>/ns/<namespace>/sa/<name>`.
    #[error("`{0}` is not spiffe://<trust_domain>/ns/<namespace>/sa/<name>")]
    Malformed(String),
}

impl Identity {
    /// The identity of the process `name` in `mtls`'s trust domain and namespace.
    pub fn of(mtls: &weft_core::config::MtlsConfig, name: &str) -> Self {
        Self {
            trust_domain: mtls.trust_domain.clone(),
            namespace: mtls.namespace.clone(),
            name: name.to_owned(),
        }
    }

    /// Parses `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [domain, "ns", namespace, "sa", name]
                if !domain.is_empty() && !namespace.is_empty() && !name.is_empty() =>
            {
                Ok(Self {
                    trust_domain: (*domain).to_owned(),
                    namespace: (*namespace).to_owned(),
                    name: (*name).to_owned(),
                })
            }
            _ => Err(malformed()),
        }
    }

    /// The identity in the `spiffe://` URI SAN of the DER certificate `der`.
    pub fn of_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?
            .ok_or(IdentityError::NoUri)?;
        let uri = san
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                    Some(*uri)
                }
                _ => None,
            })
            .ok_or(IdentityError::NoUri)?;
        Self::parse(uri)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.name
        )
    }
}

/// The verified identity of the client of a connection, found in each of its requests'
/// extensions (the server puts it there after the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Identity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_round_trips_and_other_uris_are_refused() {
        let id = Identity::parse("spiffe://weft.local/ns/default/sa/order").unwrap();
        assert_eq!(id.name, "order");
        assert_eq!(id.to_string(), "spiffe://weft.local/ns/default/sa/order");
        for bad in [
            "https://weft.local/ns/default/sa/order",
            "spiffe://weft.local/sa/order",
            "spiffe://weft.local/ns/default/sa/",
            "spiffe://weft.local/ns/default/sa/order/x",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }
}
