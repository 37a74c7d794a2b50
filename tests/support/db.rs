//! Real database servers for the tests: PostgreSQL and MariaDB from Debian's packages (`make
//! deps` installs them), each started by the test process in a fresh data directory on a free
//! 127.0.0.1 port, and stopped when the process exits, however it ends (a watchdog shell).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot start: {e}: run `make test` (it installs the databases)")
    });
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server process under a watchdog that kills it when the test process goes away.
#[derive(Debug)]
struct Server {
    /// The shell line that execs the server in the foreground.
    exec: String,
    /// What makes it shut down at once, dropping its connections.
    stop_signal: &'static str,
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<std::process::Child>>,
}

impl Server {
    fn up(&self) {
        let script = crate::watchdog(&format!("{} >>server.log 2>&1", self.exec), &self.dir);
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a database server");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "database did not listen on 127.0.0.1:{} within 60 s: see {}",
                self.port,
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server: a clean shutdown that drops every connection.
    fn down(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = Command::new("pkill")
                .args([self.stop_signal, "-P", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
    }
}

/// A PostgreSQL server with trust authentication for user `sluice`, database `postgres`.
#[derive(Debug)]
pub struct Postgres {
    /// `postgres://sluice@127.0.0.1:PORT/postgres`.
    pub url: String,
    server: Server,
    _dir: tempfile::TempDir,
}

/// Where Debian puts PostgreSQL's server binaries (the newest version installed).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "/usr/lib/postgresql: PostgreSQL is not installed: run `make test` (it installs it)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries")
}

impl Postgres {
    /// initdb in a fresh directory, then start.
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// A server that accepts TLS connections only (`hostssl`), with a certificate for
    /// 127.0.0.1 signed by a fresh CA; the CA certificate is at [`Postgres::ca_cert`].
    pub fn start_tls_only() -> Postgres {
        Self::start_with(true)
    }

    /// The CA certificate of a [`Postgres::start_tls_only`] server.
    pub fn ca_cert(&self) -> PathBuf {
        self.server.dir.join("ca.crt")
    }

    fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let bin = pg_bin();
        // PostgreSQL refuses to run as root: run it as the `postgres` user then.
        let as_pg = if is_root() {
            run(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
            );
            "setpriv --reuid postgres --regid postgres --init-groups --".to_owned()
        } else {
            String::new()
        };
        run(
            "initdb",
            Command::new("sh").arg("-c").arg(format!(
                "{as_pg} {} -D {} -A trust -U sluice -E UTF8 --no-sync",
                bin.join("initdb").display(),
                data.display()
            )),
        );
        let mut ssl = String::new();
        if tls {
            let d = dir.path();
            crate::test_certificates(d);
            if is_root() {
                run(
                    "chown",
                    Command::new("chown")
                        .args(["-R", "postgres:postgres"])
                        .arg(d),
                );
            }
            // TLS or nothing: plain TCP connections are refused.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                d.display()
            );
        }
        let port = free_port();
        let server = Server {
            exec: format!(
                "exec {as_pg} {} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off{ssl}",
                bin.join("postgres").display(),
                data.display(),
                dir.path().display()
            ),
            stop_signal: "-INT", // fast shutdown (SIGTERM would wait for clients to leave)
            dir: dir.path().to_path_buf(),
            port,
            child: Mutex::new(None),
        };
        server.up();
        let pg = Postgres {
            url: format!(
                "postgres://sluice@127.0.0.1:{port}/postgres{}",
                if tls {
                    format!(
                        "?sslmode=verify-full&sslrootcert={}",
                        dir.path().join("ca.crt").display()
                    )
                } else {
                    String::new()
                }
            ),
            server,
            _dir: dir,
        };
        // Accepting TCP is not yet accepting queries.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("psql")
            .args([&pg.url, "-Atqc", "select 1"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "PostgreSQL never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// Runs SQL with psql; returns its unaligned output (`|`-separated columns).
    /// The rows in `table`.
    pub fn count(&self, table: &str) -> usize {
        self.sql(&format!("SELECT COUNT(*) FROM {table}"))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn sql(&self, sql: &str) -> String {
        run(
            "psql",
            Command::new("psql").args([&self.url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]),
        )
    }

    /// Stops the server.
    pub fn down(&self) {
        self.server.down();
    }

    /// Starts it again on the same port and data.
    pub fn up(&self) {
        self.server.up();
    }
}

/// A MariaDB server with user `sluice` (password `sluice`) owning database `sluice`.
#[derive(Debug)]
pub struct MariaDb {
    /// `mysql://sluice:sluice@127.0.0.1:PORT/sluice`.
    pub url: String,
    socket: PathBuf,
    server: Server,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    /// mariadb-install-db in a fresh directory, then start and create the user.
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let user = if is_root() { "--user=root" } else { "" };
        run(
            "mariadb-install-db",
            Command::new("sh").arg("-c").arg(format!(
                "mariadb-install-db --no-defaults --datadir={} {user} --auth-root-authentication-method=normal --skip-test-db",
                data.display()
            )),
        );
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let mariadbd = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("mariadbd: MariaDB is not installed: run `make test` (it installs it)");
        let server = Server {
            exec: format!(
                "exec {mariadbd} --no-defaults --datadir={} --port={port} --bind-address=127.0.0.1 --socket={} --pid-file={}/mysqld.pid {user} --skip-log-bin --innodb-flush-log-at-trx-commit=2 --innodb-buffer-pool-size=64M",
                data.display(),
                socket.display(),
                dir.path().display()
            ),
            stop_signal: "-TERM",
            dir: dir.path().to_path_buf(),
            port,
            child: Mutex::new(None),
        };
        server.up();
        let db = MariaDb {
            url: format!("mysql://sluice:sluice@127.0.0.1:{port}/sluice"),
            socket,
            server,
            _dir: dir,
        };
        db.root_sql(
            "CREATE DATABASE sluice; CREATE USER 'sluice'@'%' IDENTIFIED BY 'sluice'; GRANT ALL ON sluice.* TO 'sluice'@'%';",
        );
        db
    }

    fn root_sql(&self, sql: &str) -> String {
        run(
            "mariadb",
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-u", "root", "-N", "-B", "-e", sql]),
        )
    }

    /// Runs SQL in database `sluice`; returns tab-separated rows.
    pub fn sql(&self, sql: &str) -> String {
        self.root_sql(&format!("USE sluice; {sql}"))
    }

    /// Stops the server.
    pub fn down(&self) {
        self.server.down();
    }

    /// Starts it again on the same port and data.
    pub fn up(&self) {
        self.server.up();
    }
}
