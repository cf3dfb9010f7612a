//! The gRPC contract a process knows: the descriptor sets it was built with, plus those that
//! mesh-config names (`upstreams.<name>.descriptor_set`).
//!
//! Everything the mesh needs to know about a method comes from here, never from a list in the
//! code: who may call it (the `weft.api.v1.access` option, or the serving upstream's
//! `default_access`), whether a failed call may be retried (`idempotency_level`), and which
//! method publishes the token signing keys (the one returning `weft.api.v1.Jwks`). A fourth
//! service is therefore added with its proto and its mesh-config entries alone.
//!
//! `launch` builds the process's contract once, before anything else runs, and
//! [`install`]s it; layers read it with [`current`]. It is process-wide data, like the config
//! it is built from, and never changes afterwards.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use prost_reflect::{DescriptorPool, MethodDescriptor, Value};
pub use weft_mesh_proto::Access;

use crate::config::{DefaultAccess, MeshConfig};

/// A descriptor set that could not be read into a contract.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file named in mesh-config could not be read.
    #[error("key `upstreams.{upstream}.descriptor_set`: cannot read {}: {reason}", file.display())]
    Read {
        /// The upstream whose descriptor set it is.
        upstream: String,
        /// The file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The bytes are not a valid `FileDescriptorSet`, or conflict with one read before.
    #[error("{source_name}: not a usable FileDescriptorSet: {reason}")]
    Decode {
        /// The file or the built-in contract.
        source_name: String,
        /// What was wrong.
        reason: String,
    },
    /// A `grpc_services` entry names a service that the upstream's own `descriptor_set` does
    /// not describe.
    #[error(
        "key `upstreams.{upstream}.grpc_services`: its descriptor_set does not describe `{service}`"
    )]
    UnknownService {
        /// The upstream.
        upstream: String,
        /// The service it lists.
        service: String,
    },
}

/// What the contract says of one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodFacts {
    /// Who may call it.
    pub access: Access,
    /// Whether a failed call may be retried (`NO_SIDE_EFFECTS` or `IDEMPOTENT`).
    pub idempotent: bool,
}

/// The methods a process knows, with their access and retry safety.
#[derive(Debug, Clone)]
pub struct Contract {
    pool: DescriptorPool,
    /// By gRPC path (`/package.Service/Method`). Looked up on every call by the server's access
    /// check and the client's retry policy: foldhash, not SipHash (the paths come from the
    /// process's own descriptors, so there is no flooding to defend against).
    methods: HashMap<String, MethodFacts, foldhash::fast::FixedState>,
    /// The path of the method that returns the token signing keys, if any.
    jwks_path: Option<String>,
    /// The gRPC services each upstream serves (its `grpc_services`, or every service of its
    /// `descriptor_set`).
    upstream_services: HashMap<String, Vec<String>>,
}

// === impl Contract ===

impl Contract {
    /// The contract of the encoded descriptor sets `built_in` (the ones compiled into the
    /// binary) and of the `descriptor_set` files of `config`'s upstreams.
    pub fn load(built_in: &[&[u8]], config: &MeshConfig) -> Result<Self, ContractError> {
        let mut pool = DescriptorPool::new();
        for bytes in built_in {
            pool.decode_file_descriptor_set(*bytes)
                .map_err(|e| ContractError::Decode {
                    source_name: "the built-in contract".into(),
                    reason: e.to_string(),
                })?;
        }
        // Which upstream serves a service decides the access of its undeclared methods.
        let mut default_access: HashMap<String, Access> = HashMap::new();
        let mut upstream_services = HashMap::new();
        for (name, upstream) in &config.upstreams {
            let access = match upstream.default_access {
                DefaultAccess::Public => Access::Public,
                DefaultAccess::Authenticated => Access::Authenticated,
            };
            let mut services = upstream.grpc_services.clone();
            if let Some(file) = &upstream.descriptor_set {
                let added = add_file(&mut pool, name, file)?;
                if services.is_empty() {
                    services = added;
                }
            }
            // A process knows the contracts it was built with and the files it is given; the
            // services of other upstreams are not its business (a service calls few of them),
            // so they are left out here, and a caller of one finds no facts about it.
            let mut described = Vec::new();
            for service in services {
                if pool.get_service_by_name(&service).is_some() {
                    default_access.insert(service.clone(), access);
                    described.push(service);
                } else if upstream.descriptor_set.is_some() {
                    return Err(ContractError::UnknownService {
                        upstream: name.clone(),
                        service,
                    });
                }
            }
            upstream_services.insert(name.clone(), described);
        }
        let mut contract = Self::from_pool(pool, &default_access);
        contract.upstream_services = upstream_services;
        Ok(contract)
    }

    /// The contract of `pool`; a method that declares no access takes its service's entry in
    /// `default_access`, or else [`Access::Authenticated`].
    fn from_pool(pool: DescriptorPool, default_access: &HashMap<String, Access>) -> Self {
        let access_option = pool.get_extension_by_name(weft_mesh_proto::ACCESS_OPTION);
        let mut methods = HashMap::default();
        let mut jwks_path = None;
        for service in pool.services() {
            let fallback = default_access
                .get(service.full_name())
                .copied()
                .unwrap_or(Access::Authenticated);
            for method in service.methods() {
                let path = grpc_path(&method);
                let declared = access_option
                    .as_ref()
                    .and_then(
                        |option| match method.options().get_extension(option).as_ref() {
                            Value::EnumNumber(n) => Access::try_from(*n).ok(),
                            _ => None,
                        },
                    )
                    .filter(|access| *access != Access::Unspecified);
                let idempotent = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .is_some_and(|options| {
                        options.idempotency_level()
                            != prost_types::method_options::IdempotencyLevel::IdempotencyUnknown
                    });
                if method.output().full_name() == weft_mesh_proto::JWKS_MESSAGE
                    && jwks_path.is_none()
                {
                    jwks_path = Some(path.clone());
                }
                methods.insert(
                    path,
                    MethodFacts {
                        access: declared.unwrap_or(fallback),
                        idempotent,
                    },
                );
            }
        }
        Contract {
            pool,
            methods,
            jwks_path,
            upstream_services: HashMap::new(),
        }
    }

    /// A contract that knows no method (a process started without one, as in unit tests).
    pub fn empty() -> Self {
        Self::from_pool(DescriptorPool::new(), &HashMap::new())
    }

    /// The facts of the method at `path` (`/package.Service/Method`), if the contract has it.
    pub fn method(&self, path: &str) -> Option<MethodFacts> {
        self.methods.get(path).copied()
    }

    /// Who may call the method at `path`; `None` outside the contract (health, reflection).
    pub fn access(&self, path: &str) -> Option<Access> {
        self.method(path).map(|facts| facts.access)
    }

    /// Whether the method at `path` may be retried whatever its request says.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.method(path).is_some_and(|facts| facts.idempotent)
    }

    /// Every method's gRPC path.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// The path of the method that serves the token signing keys (`weft.api.v1.Jwks`).
    pub fn jwks_path(&self) -> Option<&str> {
        self.jwks_path.as_deref()
    }

    /// The gRPC services the upstream `name` serves (full names) that this contract describes.
    pub fn services_of(&self, upstream: &str) -> &[String] {
        self.upstream_services
            .get(upstream)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The descriptors, for transcoding and reflection.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }
}

/// Adds the descriptor set in `file` to `pool`; returns the services it describes.
fn add_file(
    pool: &mut DescriptorPool,
    upstream: &str,
    file: &Path,
) -> Result<Vec<String>, ContractError> {
    let bytes = std::fs::read(file).map_err(|e| ContractError::Read {
        upstream: upstream.to_owned(),
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let mut own = DescriptorPool::new();
    let decode = |e: prost_reflect::DescriptorError| ContractError::Decode {
        source_name: file.display().to_string(),
        reason: e.to_string(),
    };
    own.decode_file_descriptor_set(bytes.as_slice())
        .map_err(decode)?;
    pool.decode_file_descriptor_set(bytes.as_slice())
        .map_err(decode)?;
    Ok(own.services().map(|s| s.full_name().to_owned()).collect())
}

/// `/package.Service/Method`.
pub fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

static CURRENT: OnceLock<Contract> = OnceLock::new();

/// Makes `contract` the process's contract; once per process (later calls are ignored).
pub fn install(contract: Contract) {
    let _ = CURRENT.set(contract);
}

/// The process's contract; an empty one until [`install`] ran.
pub fn current() -> &'static Contract {
    static EMPTY: OnceLock<Contract> = OnceLock::new();
    CURRENT
        .get()
        .unwrap_or_else(|| EMPTY.get_or_init(Contract::empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weft() -> Contract {
        let config = MeshConfig::default();
        Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config).unwrap()
    }

    #[test]
    fn access_is_read_from_the_proto_options() {
        let contract = weft();
        let access = |path| contract.access(path);
        assert_eq!(
            access("/weft.auth.v1.AuthService/Login"),
            Some(Access::Public)
        );
        assert_eq!(
            access("/weft.user.v1.UserService/CreateUser"),
            Some(Access::Service)
        );
        assert_eq!(
            access("/weft.user.v1.UserService/ListUsers"),
            Some(Access::Admin)
        );
        assert_eq!(
            access("/weft.order.v1.OrderService/CreateOrder"),
            Some(Access::Authenticated)
        );
        assert_eq!(access("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn retry_safety_and_the_key_method_come_from_the_descriptors() {
        let contract = weft();
        assert!(contract.is_idempotent("/weft.user.v1.UserService/GetMe"));
        assert!(!contract.is_idempotent("/weft.order.v1.OrderService/CreateOrder"));
        assert_eq!(
            contract.jwks_path(),
            Some("/weft.auth.v1.AuthService/GetJwks")
        );
        assert_eq!(contract.paths().count(), 5 + 5 + 8);
    }

    #[test]
    fn services_no_descriptor_describes_are_left_out_and_a_bad_file_is_an_error() {
        let mut config = MeshConfig::default();
        let mut upstream = crate::config::UpstreamConfig::with_endpoint("http://x:1".into());
        // A service this process was not built with: not its business, no facts about it.
        upstream.grpc_services = vec!["acme.Other".into()];
        config.upstreams.insert("acme".into(), upstream.clone());
        let contract = Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config).unwrap();
        assert!(contract.services_of("acme").is_empty());
        upstream.grpc_services.clear();
        upstream.descriptor_set = Some("/nonexistent/echo.bin".into());
        config.upstreams.insert("acme".into(), upstream);
        let err = Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config).unwrap_err();
        assert!(
            err.to_string().contains("upstreams.acme.descriptor_set"),
            "{err}"
        );
    }
}
