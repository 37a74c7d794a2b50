//! Apache Kafka for the tests and benchmarks: one KRaft node ([`Broker`]) or a three-node
//! cluster ([`Cluster`]) on 127.0.0.1, each node started by `scripts/kafka-broker.sh` (the same
//! settings `make demo` uses) under a [`watchdog`](crate::watchdog) that stops it and deletes
//! its storage when the test process ends, however it ends. Nodes can be stopped (SIGTERM),
//! killed (SIGKILL), frozen (SIGSTOP) and started again on their storage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{cache_dir, free_port, kafka_tool, root, try_kafka_tool, watchdog};

/// How long a question about the group is asked again while it fails: tests stop, kill and
/// freeze brokers, and poll the committed offsets meanwhile.
pub(crate) const RETRY_WHILE_DOWN: Duration = Duration::from_secs(90);

/// One Kafka node (broker and controller in one process) on 127.0.0.1, started by this test
/// process and stopped when it exits.
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:PORT`: this node, or for a cluster's node the bootstrap list of the cluster.
    pub addr: String,
    /// This node's id (1 for a single node).
    pub node_id: u32,
    port: u16,
    controller_port: u16,
    /// `--` settings and the cluster's voters, passed to the start script.
    args: Vec<String>,
    data: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    /// The secured listeners, for a node started with [`Broker::start_secured`].
    pub secured: Option<Secured>,
}

/// The secured listeners of a node (`scripts/kafka-broker.sh` with `KAFKA_TLS_DIR`). The
/// node's `addr` stays the harness's PLAINTEXT listener, whose principal (ANONYMOUS) is the
/// only super user: topics, users and ACLs are made there.
#[derive(Debug, Clone)]
pub struct Secured {
    /// `127.0.0.1:PORT` of the SASL_SSL listener (SCRAM-SHA-512 and -256, PLAIN, OAUTHBEARER
    /// with unsigned tokens).
    pub sasl_ssl: String,
    /// `127.0.0.1:PORT` of the SSL listener, which requires a client certificate (mTLS).
    pub ssl: String,
    /// The test CA's directory (`scripts/tls-certs.sh`): `ca.crt`, and `NAME.crt`, `NAME.key`
    /// for each [`Broker::client_certificate`].
    pub tls: PathBuf,
    /// `name=password` of each SCRAM and PLAIN user.
    users: String,
    /// The one host name the broker's certificate names, if not 127.0.0.1.
    host: Option<String>,
    sasl_ssl_port: u16,
    ssl_port: u16,
}

impl Broker {
    /// Starts a single node on fresh storage with secured listeners beside the harness's
    /// PLAINTEXT one (`scripts/kafka-broker.sh`, KAFKA_TLS_DIR): a test CA and broker
    /// certificate (for 127.0.0.1 and localhost; with `host`, for that name alone, which the
    /// secured listeners then advertise), `users` (name, password) as SCRAM-SHA-512/256 and
    /// PLAIN users, and the StandardAuthorizer denying what no ACL allows.
    pub fn start_secured(users: &[(&str, &str)], host: Option<&str>) -> Broker {
        let mut broker = Self::node(1, free_port(), free_port(), None, &[]);
        let tls = broker.data.path().join("tls");
        let mut certs = Command::new(root().join("scripts/tls-certs.sh"));
        certs.arg(&tls).arg("broker");
        if let Some(host) = host {
            certs.env("TLS_SAN", format!("DNS:{host}"));
        }
        crate::check("scripts/tls-certs.sh", certs.output());
        let (sasl_ssl_port, ssl_port) = (free_port(), free_port());
        broker.secured = Some(Secured {
            sasl_ssl: format!("127.0.0.1:{sasl_ssl_port}"),
            ssl: format!("127.0.0.1:{ssl_port}"),
            tls,
            host: host.map(str::to_owned),
            users: users
                .iter()
                .map(|(u, p)| format!("{u}={p}"))
                .collect::<Vec<_>>()
                .join(" "),
            sasl_ssl_port,
            ssl_port,
        });
        broker.up();
        broker
    }

    /// A client certificate for `CN=name` signed by the node's test CA (`NAME.crt`,
    /// `NAME.key`, the key encrypted with `password` if given); returns the TLS directory.
    pub fn client_certificate(&self, name: &str, password: Option<&str>) -> PathBuf {
        let secured = self.secured.as_ref().expect("a secured broker");
        let spec = match password {
            Some(p) => format!("{name}:{p}"),
            None => name.to_owned(),
        };
        crate::check(
            "scripts/tls-certs.sh",
            Command::new(root().join("scripts/tls-certs.sh"))
                .arg(&secured.tls)
                .arg(spec)
                .output(),
        );
        secured.tls.clone()
    }

    /// Starts a single-node broker on fresh storage.
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// [`Broker::start`] with broker settings (`KEY=VALUE`) over the start script's defaults.
    pub fn start_with(settings: &[&str]) -> Broker {
        let broker = Self::node(1, free_port(), free_port(), None, settings);
        broker.up();
        broker
    }

    fn node(
        node_id: u32,
        port: u16,
        controller_port: u16,
        voters: Option<&str>,
        settings: &[&str],
    ) -> Broker {
        let mut args = Vec::new();
        if let Some(voters) = voters {
            args.extend([node_id.to_string(), voters.to_owned()]);
        }
        args.push("--".to_owned());
        args.extend(settings.iter().map(|s| s.to_string()));
        Broker {
            addr: format!("127.0.0.1:{port}"),
            node_id,
            port,
            controller_port,
            args,
            data: tempfile::tempdir().unwrap(),
            child: Mutex::new(None),
            secured: None,
        }
    }

    /// Where the node keeps its log (`broker.log`) and data.
    pub fn dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// (Re)starts the node on the same ports and storage and waits until it listens.
    pub fn up(&self) {
        self.spawn();
        self.wait_listening();
    }

    fn spawn(&self) {
        let script = root().join("scripts/kafka-broker.sh");
        let mut line = format!(
            "'{}' '{}' {} {}",
            script.display(),
            self.data.path().display(),
            self.port,
            self.controller_port
        );
        for arg in &self.args {
            line.push_str(&format!(" '{arg}'"));
        }
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(watchdog(&line, self.data.path()))
            .env("SLUICE_CACHE", cache_dir())
            .stdin(Stdio::null());
        if let Some(secured) = &self.secured {
            command
                .env("KAFKA_TLS_DIR", &secured.tls)
                .env("SASL_SSL_PORT", secured.sasl_ssl_port.to_string())
                .env("SSL_PORT", secured.ssl_port.to_string())
                .env("KAFKA_USERS", &secured.users)
                .env(
                    "ADVERTISED_HOST",
                    secured.host.as_deref().unwrap_or("127.0.0.1"),
                );
        }
        let child = command.spawn().expect("start the broker");
        *self.child.lock().unwrap() = Some(child);
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "Kafka node {} did not listen on 127.0.0.1:{} ({}): see {} (run `make deps` if the broker is missing)",
                self.node_id,
                self.port,
                if exited.is_some() {
                    "it exited"
                } else {
                    "60 s"
                },
                self.data.path().join("broker.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the node (SIGKILL), keeping its storage; returns once its port is closed.
    pub fn down(&self) {
        self.stop_with("-KILL");
    }

    /// Stops the node gracefully (SIGTERM: a controlled shutdown that hands its leaderships
    /// over), keeping its storage; returns once it exited.
    pub fn stop(&self) {
        self.stop_with("-TERM");
    }

    fn stop_with(&self, signal: &str) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            signal_broker(&child, signal);
            // The watchdog ends once the broker has (it reaps it first).
            let _ = child.wait();
        }
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the node (SIGSTOP): connections stay open and nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`Broker::pause`]d node go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.lock().unwrap();
        let watchdog = child.as_ref().expect("the broker is up");
        assert!(
            signal_broker(watchdog, signal),
            "pkill {signal} found no broker process"
        );
    }

    /// Writes `count` events with the reference client (see `kafka_tool.py produce`), with
    /// extra flags such as `--tombstone`.
    pub fn produce(&self, topic: &str, count: usize, start: usize, extra: &[&str]) {
        let (count, start) = (count.to_string(), start.to_string());
        let mut args = vec![
            "produce", "--broker", &self.addr, "--topic", topic, "--count", &count, "--start",
            &start,
        ];
        args.extend_from_slice(extra);
        if let Err(e) = try_kafka_tool(&args) {
            panic!("{e}\nthe broker's log ends:\n{}", self.log_tail());
        }
    }

    /// Every record of `topic`, read by the reference client until `expect` came (or 20 s of
    /// silence), as JSON objects (`kafka_tool.py consume`).
    pub fn consume(&self, topic: &str, expect: usize) -> Vec<serde_json::Value> {
        kafka_tool(&[
            "consume",
            "--broker",
            &self.addr,
            "--topic",
            topic,
            "--expect",
            &expect.to_string(),
            "--timeout",
            "20",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
    }

    /// The last 30 lines of the node's log (for a failure message).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The sum of the offsets `group` committed on `topic` (read with the admin API).
    pub fn committed_sum(&self, topic: &str, group: &str) -> i64 {
        self.committed(topic, group)
            .values()
            .filter(|o| **o >= 0)
            .sum()
    }

    /// The offset `group` committed on each partition of `topic` (-1: none). Asked again
    /// while the broker does not answer (a test may have stopped or frozen it), for up to 90 s.
    pub fn committed(&self, topic: &str, group: &str) -> std::collections::BTreeMap<i32, i64> {
        let args = [
            "committed",
            "--broker",
            &self.addr,
            "--topic",
            topic,
            "--group",
            group,
        ];
        let deadline = Instant::now() + RETRY_WHILE_DOWN;
        let out = loop {
            match try_kafka_tool(&args) {
                Ok(out) => break out,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        let offsets: std::collections::BTreeMap<String, i64> = serde_json::from_str(&out).unwrap();
        offsets
            .into_iter()
            .map(|(p, o)| (p.parse().unwrap(), o))
            .collect()
    }

    /// Creates a topic.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        kafka_tool(&[
            "create",
            "--broker",
            &self.addr,
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
        ]);
    }
}

/// Sends `signal` to the broker under `watchdog` (the watchdog shell is the child this process
/// started; the broker, java, is its child). Whether a process was found.
fn signal_broker(watchdog: &Child, signal: &str) -> bool {
    Command::new("pkill")
        .args([signal, "-P", &watchdog.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Three Kafka nodes on 127.0.0.1 forming one cluster (each a broker and a voter of a static
/// controller quorum), internal topics replicated three times with `min.insync.replicas` 2;
/// preferred leaders are restored every 5 s.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, ids 1 to 3.
    pub nodes: Vec<Broker>,
    /// The bootstrap list of every node.
    pub bootstrap: String,
}

impl Cluster {
    /// Starts the three nodes and waits until each listens.
    pub fn start() -> Cluster {
        Self::start_with_security(None)
    }

    /// [`Cluster::start`] with secured listeners on every node (as
    /// [`Broker::start_secured`]: one test CA, `users` on every node). Each node's `secured`
    /// names its own listeners; [`Cluster::sasl_ssl`] lists all of them.
    pub fn start_secured(users: &[(&str, &str)]) -> Cluster {
        Self::start_with_security(Some(users))
    }

    /// The bootstrap list of every node's SASL_SSL listener.
    pub fn sasl_ssl(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.secured.as_ref().map(|s| s.sasl_ssl.clone()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_with_security(users: Option<&[(&str, &str)]>) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let bootstrap = ports
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Broker> = ports
            .iter()
            .enumerate()
            // A restarted node gets its preferred leaderships back within seconds, not the
            // default 5 minutes: clients see it return when they must talk to it again.
            .map(|(i, (p, c))| {
                Broker::node(
                    i as u32 + 1,
                    *p,
                    *c,
                    Some(&voters),
                    &["leader.imbalance.check.interval.seconds=5"],
                )
            })
            .collect();
        if let Some(users) = users {
            let tls = nodes[0].data.path().join("tls");
            crate::check(
                "scripts/tls-certs.sh",
                Command::new(root().join("scripts/tls-certs.sh"))
                    .arg(&tls)
                    .arg("broker")
                    .output(),
            );
            let users = users
                .iter()
                .map(|(u, p)| format!("{u}={p}"))
                .collect::<Vec<_>>()
                .join(" ");
            for node in &mut nodes {
                let (sasl_ssl_port, ssl_port) = (free_port(), free_port());
                node.secured = Some(Secured {
                    sasl_ssl: format!("127.0.0.1:{sasl_ssl_port}"),
                    ssl: format!("127.0.0.1:{ssl_port}"),
                    tls: tls.clone(),
                    users: users.clone(),
                    host: None,
                    sasl_ssl_port,
                    ssl_port,
                });
            }
        }
        // Every node is started before any is waited for: the quorum needs a majority.
        for node in &nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_listening();
            node.addr = bootstrap.clone();
        }
        Cluster { nodes, bootstrap }
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> &Broker {
        &self.nodes[id as usize - 1]
    }
}

/// The reference client built on Kafka's own Java client (`tests/tools/java`, built by
/// `make deps`) running `args`; returns stdout, panics with stderr on failure.
pub fn java_tool(args: &[&str]) -> String {
    let output = java_tool_command(args)
        .output()
        .unwrap_or_else(|e| panic!("java: {e}: run `make deps` (it installs a JDK)"));
    assert!(
        output.status.success(),
        "java KafkaTool {args:?} failed (run `make deps` if it was never built):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The command [`java_tool`] runs, to start it in the background (a producer with `--rate`).
pub fn java_tool_command(args: &[&str]) -> Command {
    let dir = root().join("tests/tools/java/target");
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{0}/classes:{0}/libs/*", dir.display()))
        .arg("dev.sluice.tool.KafkaTool")
        .args(args);
    command
}

/// Every record of `topic` as the Java client reads it with `isolation` (`read_committed` or
/// `read_uncommitted`), as JSON values.
pub fn java_consume(broker: &str, topic: &str, isolation: &str) -> Vec<serde_json::Value> {
    java_tool(&[
        "consume",
        "--broker",
        broker,
        "--topic",
        topic,
        "--isolation",
        isolation,
    ])
    .lines()
    .map(|l| serde_json::from_str(l).expect("a JSON line"))
    .collect()
}
