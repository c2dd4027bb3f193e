//! What the store's commands run on: one connection manager to a single Redis
//! (or the master Sentinel names), or the redis crate's cluster connection,
//! which routes each command to its slot's master and follows `MOVED` / `ASK`
//! redirections (slot migrations) and failovers itself.
//!
//! Batches: a pipeline on a single Redis is one round trip. A cluster accepts
//! a pipeline only when every key in it hashes to the same slot, and session
//! keys are spread over all slots on purpose, so on a cluster a batch is sent
//! as concurrent single commands instead: the cluster connection multiplexes
//! them over its one connection per node, which pipelines them per master.
//!
//! Clients: `ca` (PEM) replaces the system roots for every TLS connection,
//! whether to Redis, a sentinel or a cluster node.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult,
    TlsCertificates, TlsMode, Value,
};

use crate::config::RedisConfig;

/// Attempts per cluster command: redirections (`MOVED`, `ASK`) and retries
/// after a node went away count alike. `command_timeout` bounds them anyway.
const CLUSTER_ATTEMPTS: u32 = 6;
/// Waits between those attempts, in ms: short, a slot move is quick.
const CLUSTER_RETRY_MIN_MS: u64 = 5;
const CLUSTER_RETRY_MAX_MS: u64 = 100;

/// `(host, port)` of cluster nodes.
pub(super) type Nodes = Vec<(String, u16)>;

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Every command of `pipe`, answers in order (see the module header).
    /// Fails as a pipeline does: with the first error, the others ran.
    pub(super) async fn batch(self, pipe: Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(mut c) => pipe.query_async(&mut c).await,
            Conn::Cluster(c) => {
                let sent = pipe.cmd_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { c.req_packed_command(cmd).await?.extract_error() }
                });
                let replies = join_all(sent).await;
                // A lost connection decides over an error answer: it means "retry".
                let worst = replies.iter().position(|r| match r {
                    Err(e) => super::link::is_connection_error(e),
                    Ok(_) => false,
                });
                let first_err = worst.or_else(|| replies.iter().position(Result::is_err));
                let mut replies = replies;
                if let Some(i) = first_err {
                    return Err(replies.swap_remove(i).err().unwrap_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Client, "lost reply"))
                    }));
                }
                Ok(replies.into_iter().flatten().collect())
            }
        }
    }
}

/// `host:port` as a connection address (TLS as configured).
pub(super) fn addr(tls: bool, host: &str, port: u16) -> ConnectionAddr {
    match tls {
        true => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
        false => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

pub(super) fn certs(cfg: &RedisConfig) -> Option<TlsCertificates> {
    cfg.ca.as_ref().map(|pem| TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

/// A client for one server at `host:port` with the configured credentials,
/// database and TLS roots.
pub(super) fn client_at(cfg: &RedisConfig, host: &str, port: u16) -> RedisResult<Client> {
    let info = addr(cfg.tls, host, port)
        .into_connection_info()?
        .set_redis_settings(redis_info(cfg));
    match (cfg.tls, certs(cfg)) {
        (true, Some(certs)) => Client::build_with_tls(info, certs),
        _ => Client::open(info),
    }
}

pub(super) fn redis_info(cfg: &RedisConfig) -> redis::RedisConnectionInfo {
    let mut info = redis::RedisConnectionInfo::default().set_db(cfg.db);
    if let Some(user) = &cfg.username {
        info = info.set_username(user);
    }
    if let Some(password) = &cfg.password {
        info = info.set_password(password);
    }
    info
}

/// A connection to the cluster whose seeds `cfg` names; commands answer
/// within `response` at most, whatever the redirections.
pub(super) async fn open_cluster(
    cfg: &RedisConfig,
    seeds: &[(String, u16)],
    response: Duration,
) -> RedisResult<ClusterConnection> {
    let infos: Vec<_> = (seeds.iter())
        .map(|(h, p)| addr(cfg.tls, h, *p).into_connection_info())
        .collect::<Result<_, _>>()?;
    let mut b = ClusterClientBuilder::new(infos)
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(response)
        .retries(CLUSTER_ATTEMPTS)
        .min_retry_wait(CLUSTER_RETRY_MIN_MS)
        .max_retry_wait(CLUSTER_RETRY_MAX_MS);
    if let Some(user) = &cfg.username {
        b = b.username(user);
    }
    if let Some(password) = &cfg.password {
        b = b.password(password);
    }
    if cfg.tls {
        b = b.tls(TlsMode::Secure);
        if let Some(certs) = certs(cfg) {
            b = b.certs(certs);
        }
    }
    b.build()?.get_async_connection().await
}

/// The nodes of a `CLUSTER NODES` answer that are not failing: (masters,
/// replicas), where the events subscription may go (a message published
/// anywhere in a cluster reaches every node).
pub(super) fn cluster_nodes(text: &str) -> (Nodes, Nodes) {
    let mut masters = Vec::new();
    let mut replicas = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if flags
            .split(',')
            .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
        {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let hostport = address.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else {
            continue;
        };
        let (Ok(port), false) = (port.parse::<u16>(), host.is_empty()) else {
            continue;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match flags.split(',').any(|f| f == "master") {
            true => masters.push((host, port)),
            false => replicas.push((host, port)),
        }
    }
    (masters, replicas)
}

/// The text of an `INFO` answer: one per node on a cluster (every master answers).
pub(super) fn info_texts(v: Value) -> Vec<String> {
    match v {
        Value::BulkString(b) => vec![String::from_utf8_lossy(&b).into_owned()],
        Value::SimpleString(s) => vec![s],
        Value::VerbatimString { text, .. } => vec![text],
        Value::Map(pairs) => pairs.into_iter().flat_map(|(_, v)| info_texts(v)).collect(),
        Value::Array(items) => items.into_iter().flat_map(info_texts).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_nodes_lists_live_masters_first() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master,fail - 0 0 2 connected
c3 127.0.0.1:7003@17003,host-3 slave a1 0 0 1 connected
d4 127.0.0.1:7004@17004 master - 0 0 3 connected 5461-10922
e5 :0@0 master,noaddr - 0 0 0 disconnected
";
        let (masters, replicas) = super::cluster_nodes(text);
        let ports: Vec<u16> = masters.iter().chain(&replicas).map(|n| n.1).collect();
        assert_eq!(ports, [7001, 7004, 7003]);
        assert!(masters.iter().all(|n| n.0 == "127.0.0.1"));
    }

    #[test]
    fn info_of_one_or_many_nodes() {
        use redis::Value;
        let one = Value::BulkString(b"run_id:x\r\n".to_vec());
        assert_eq!(super::info_texts(one), ["run_id:x\r\n"]);
        let many = Value::Map(vec![
            (
                Value::SimpleString("a:1".into()),
                Value::BulkString(b"run_id:a".to_vec()),
            ),
            (
                Value::SimpleString("b:2".into()),
                Value::BulkString(b"run_id:b".to_vec()),
            ),
        ]);
        assert_eq!(super::info_texts(many).len(), 2);
    }
}
