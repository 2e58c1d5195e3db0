//! Command-line pieces shared by `vxmeshd` and `vxmeshctl`.

/// Where the registry is: the etcd flags both binaries take (environment variables
/// named after vxmeshd's, so one EnvironmentFile serves both).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        global = true,
        env = "VXMESHD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding `config` and `subnets/` (flannel's layout).
    #[arg(
        long,
        global = true,
        env = "VXMESHD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
}
