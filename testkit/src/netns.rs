//! Several hosts on one machine: Linux network namespaces joined by a bridge, one namespace and
//! one address per host, so that processes bound to a host's address reach each other only
//! across the bridge, and a host can be cut off (its link down) and restored.
//!
//! Needs root and `ip` (iproute2). [`Network::create`] says why it cannot when it cannot, so a
//! test can skip with that message; everything it made is deleted when the [`Network`] drops,
//! and a run's names and subnet come from its process id, so concurrent runs do not meet.
//!
//! ```ignore
//! let net = Network::create(&["gateway", "order1", "order2"])?;
//! let order1 = net.addr("order1");                        // 10.x.y.11
//! let child = net.command("order1", &binary).spawn()?;    // runs inside order1's namespace
//! net.cut("order1")?;                                     // its link down: packets vanish
//! net.restore("order1")?;
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command as StdCommand,
};

use tokio::{io::copy_bidirectional, net::TcpListener, process::Command};

/// A bridge in the root namespace and one namespace per host, deleted on drop.
#[derive(Debug)]
pub struct Network {
    /// `wft<n>`: the prefix of every name this network made.
    prefix: String,
    /// The subnet's first three octets.
    subnet: [u8; 3],
    /// The hosts, in the order given; host `i` has address `.{11 + i}`.
    hosts: Vec<String>,
}

impl Network {
    /// Creates the bridge (`<subnet>.1` in the root namespace) and one namespace per host, each
    /// with its own address and a default route through the bridge. `Err` says why not (not
    /// root, no `ip`, no namespaces), with whatever was made already deleted.
    pub fn create(hosts: &[&str]) -> Result<Network, String> {
        let id = std::process::id() % 10_000;
        let network = Network {
            prefix: format!("wft{id}"),
            // 10.200-249.x: out of the way of the usual private ranges, one subnet per run.
            subnet: [10, 200 + (id % 50) as u8, (id / 50 % 250) as u8],
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        };
        // What an earlier run of the same process id left behind (a test killed mid-way).
        network.delete();
        network.build()?;
        Ok(network)
    }

    /// The address of `host`; panics for a host the network does not have.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        let index = self.index(host);
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 11 + index as u8)
    }

    /// The root namespace's address on the bridge: where the hosts reach the machine's own
    /// services (see [`Network::forward`]).
    pub fn gateway_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(host)])
            .arg(program);
        command
    }

    /// Takes `host`'s link down: from now on its packets are dropped, silently (no reset), as
    /// when a host or its network goes away.
    pub fn cut(&self, host: &str) -> Result<(), String> {
        ip(&["link", "set", &self.veth(host), "down"])
    }

    /// Brings `host`'s link back up.
    pub fn restore(&self, host: &str) -> Result<(), String> {
        ip(&["link", "set", &self.veth(host), "up"])
    }

    /// Forwards TCP connections made to `<gateway_addr>:<port>` (a free port) to `target` in
    /// the root namespace, for as long as the runtime runs; returns the address the hosts use.
    /// This is how the hosts reach a server that listens on the machine's loopback only (the
    /// test PostgreSQL).
    pub async fn forward(&self, target: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind((self.gateway_addr(), 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(addr)
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("the network has no host {host:?}"))
    }

    fn namespace(&self, host: &str) -> String {
        format!("{}-{}", self.prefix, self.index(host))
    }

    /// The root side of `host`'s veth pair (at most 15 bytes, the kernel's limit).
    fn veth(&self, host: &str) -> String {
        format!("{}v{}", self.prefix, self.index(host))
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn build(&self) -> Result<(), String> {
        let result = self.try_build();
        if result.is_err() {
            self.delete();
        }
        result
    }

    fn try_build(&self) -> Result<(), String> {
        let bridge = self.bridge();
        let [a, b, c] = self.subnet;
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for host in &self.hosts {
            let (ns, veth) = (self.namespace(host), self.veth(host));
            let peer = format!("{veth}p");
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["link", "set", &peer, "name", "eth0"])?;
            let addr = format!("{}/24", self.addr(host));
            inside(&["addr", "add", &addr, "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            inside(&["route", "add", "default", "via", &format!("{a}.{b}.{c}.1")])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
        }
        Ok(())
    }

    /// Deletes whatever of the network exists (failures mean there was nothing to delete).
    fn delete(&self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(host)]);
            let _ = ip(&["link", "del", &self.veth(host)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `ip args`; `Err` holds what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = StdCommand::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
