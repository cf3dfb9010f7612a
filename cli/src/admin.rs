//! `weft admin`: makes administrators, the only way there is.
//!
//! Every account registers as an ordinary user; roles live in weft-user's database and access
//! tokens take the role from the profile at sign-in. `weft admin grant` gives a registered
//! account a role (it runs `weft-user grant-role`, which needs weft-user's database, so only
//! an operator of the deployment can); `weft admin create` registers a new account through
//! weft-auth's `Register` and then grants it `admin`, for the first administrator of a fresh
//! mesh.

use std::{
    ffi::OsStr,
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use tonic::Code;
use weft_mesh::MeshConfig;
use weft_proto::auth::{
    RegisterRequest, auth_service_client::AuthServiceClient, auth_service_server,
};

use crate::tool::{self, Deployment};

/// Time allowed to connect to weft-auth and to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `weft admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The subcommands of `weft admin`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Give a registered account a role (admin by default), in weft-user's database; the user's
    /// next sign-in carries it.
    Grant(GrantArgs),
    /// Register a new account through weft-auth and make it an administrator. The password is
    /// read from --password-file (`-` for standard input) or generated and printed once.
    Create(CreateArgs),
}

/// Options of `weft admin grant`.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub target: Deployment,
    /// The account's email.
    #[arg(long)]
    pub email: String,
    /// The role to give.
    #[arg(long, value_enum, default_value_t = RoleArg::Admin)]
    pub role: RoleArg,
}

/// Options of `weft admin create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: Deployment,
    /// The new administrator's email.
    #[arg(long)]
    pub email: String,
    /// The name shown for the account.
    #[arg(long, default_value = "Administrator")]
    pub display_name: String,
    /// A file whose first line is the password, or `-` for standard input (default: a random
    /// password, printed once).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// A role an operator may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// May do everything: add products, list users, change roles.
    Admin,
    /// An ordinary account.
    User,
}

impl RoleArg {
    fn as_arg(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::User => "user",
        }
    }
}

/// Runs `weft admin`; errors are one readable message.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Grant(args) => {
            let said = grant(&args.target, &args.email, args.role)?;
            print!("{said}");
            Ok(())
        }
        AdminCommand::Create(args) => create(args),
    }
}

/// Runs `weft-user grant-role` on the target's config; returns what it printed.
fn grant(target: &Deployment, email: &str, role: RoleArg) -> anyhow::Result<String> {
    let binary = target.bin_dir.binary("weft-user")?;
    tool::run(
        &binary,
        &[
            OsStr::new("grant-role"),
            OsStr::new("--config"),
            target.mesh.config.as_os_str(),
            OsStr::new("--email"),
            OsStr::new(email),
            OsStr::new("--role"),
            OsStr::new(role.as_arg()),
        ],
    )
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    // Fail before registering anything when the grant could not follow.
    args.target.bin_dir.binary("weft-user")?;
    let config = MeshConfig::load(Some(&args.target.mesh.config))?;
    let (password, generated) = match &args.password_file {
        Some(path) => (read_password(path)?, false),
        None => (uuid::Uuid::new_v4().simple().to_string(), true),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(register(&config, &args, &password))?;
    let said = grant(&args.target, &args.email, RoleArg::Admin)
        .context("registered, but the grant failed (run `weft admin grant` again)")?;
    print!("{said}");
    if generated {
        println!("password: {password}");
        println!("(shown this once: keep it somewhere safe)");
    }
    Ok(())
}

/// The first line of `path` (`-`: standard input), without its line ending.
fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from standard input")?;
        text
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the password from {}", path.display()))?
    };
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// Registers the account with weft-auth's `Register`, at the first endpoint of the upstream
/// that serves AuthService.
async fn register(config: &MeshConfig, args: &CreateArgs, password: &str) -> anyhow::Result<()> {
    let service = auth_service_server::SERVICE_NAME;
    let (upstream_name, upstream) = config.upstream_serving(service).with_context(|| {
        format!(
            "{} has no upstream serving {service}",
            args.target.mesh.config.display()
        )
    })?;
    let endpoint = upstream
        .endpoint_list()
        .into_iter()
        .next()
        .unwrap_or_default();
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("cannot reach weft-auth at {endpoint}: {e} (is the mesh running?)")
    };
    let request = RegisterRequest {
        email: args.email.clone(),
        password: password.to_owned(),
        display_name: args.display_name.clone(),
    };
    let answer = if config.mtls.is_on() {
        // Over mTLS, as the operator tools' identity (`weft`, see `[callers]`).
        let tls =
            weft_mesh::mtls::MeshTls::load(&config.mtls, weft_mesh::config::OPERATOR_IDENTITY)?;
        let uri: http::Uri = endpoint.parse().map_err(|e| unreachable(&e))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| unreachable(&"no host:port"))?;
        let addr = tokio::net::lookup_host(authority.as_str())
            .await
            .map_err(|e| unreachable(&e))?
            .next()
            .ok_or_else(|| unreachable(&"the host name resolves to no address"))?;
        let connection = weft_mesh::connection::Connection::with_tls(
            addr,
            http::uri::Scheme::HTTP,
            authority,
            REGISTER_TIMEOUT,
            weft_mesh::connection::Keepalive::default(),
            Some(weft_mesh::mtls::ClientTls {
                server: upstream_name.to_owned(),
                own: Some(tls),
            }),
        );
        let mut client = AuthServiceClient::new(connection);
        tokio::time::timeout(REGISTER_TIMEOUT, client.register(request))
            .await
            .map_err(|_| unreachable(&"timed out"))?
    } else {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| unreachable(&e))?
            .connect_timeout(REGISTER_TIMEOUT)
            .timeout(REGISTER_TIMEOUT)
            .connect()
            .await
            .map_err(|e| unreachable(&e))?;
        AuthServiceClient::new(channel).register(request).await
    };
    match answer {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => bail!(
            "{} is already registered: `weft admin grant --email {}` makes it an administrator",
            args.email,
            args.email
        ),
        Err(status) if status.code() == Code::Unavailable => Err(unreachable(&status.message())),
        Err(status) => bail!("weft-auth refused the registration: {}", status.message()),
    }
}
