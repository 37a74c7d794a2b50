//! Apicurio Registry for the tests: started by `scripts/schema-registry.sh` (the same way
//! `make demo` does) on a free port of 127.0.0.1 with in-memory storage, under a
//! [`watchdog`](crate::watchdog) that stops it when the test process ends; frozen (SIGSTOP) for
//! an outage that keeps its schemas. [`registry_tool`] is confluent-kafka's serializers against it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{cache_dir, free_port, root, watchdog};

/// A running schema registry.
#[derive(Debug)]
pub struct Registry {
    /// The Confluent-compatible API: `http://127.0.0.1:PORT/apis/ccompat/v7`.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Child>,
}

impl Registry {
    /// Starts a registry and waits until its API answers.
    pub fn start() -> Registry {
        Self::start_with(false)
    }

    /// A registry that serves HTTPS only, with a certificate for 127.0.0.1 signed by a fresh CA
    /// ([`Registry::ca_cert`]).
    pub fn start_tls() -> Registry {
        Self::start_with(true)
    }

    /// The CA certificate of a [`Registry::start_tls`] registry.
    pub fn ca_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn start_with(tls: bool) -> Registry {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let script = root().join("scripts/schema-registry.sh");
        let log = dir.path().join("registry.log");
        let line = format!(
            "'{}' {port} {} >'{}' 2>&1",
            script.display(),
            free_port(),
            log.display()
        );
        let mut command = Command::new("sh");
        if tls {
            crate::test_certificates(dir.path());
            command
                .env("REGISTRY_TLS_CERT", dir.path().join("server.crt"))
                .env("REGISTRY_TLS_KEY", dir.path().join("server.key"));
        }
        let child = command
            .arg("-c")
            .arg(watchdog(&line, dir.path()))
            .env("SLUICE_CACHE", cache_dir())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the schema registry");
        let scheme = if tls { "https" } else { "http" };
        let registry = Registry {
            url: format!("{scheme}://127.0.0.1:{port}/apis/ccompat/v7"),
            port,
            dir,
            child: Mutex::new(child),
        };
        // Quarkus binds its port once the application has started.
        let answers = || match tls {
            true => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            false => crate::http_get(port, "/apis/ccompat/v7/subjects")
                .is_some_and(|(code, _)| code == 200),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !answers() {
            let exited = registry.child.lock().unwrap().try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the schema registry did not answer on 127.0.0.1:{port}: see {} (run `make deps` if it is missing)",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        registry
    }

    /// Freezes the registry (SIGSTOP): connections are accepted and nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`Registry::pause`]d registry go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.lock().unwrap();
        let status = Command::new("pkill")
            .args([signal, "-P", &child.id().to_string()])
            .status()
            .expect("pkill");
        assert!(status.success(), "pkill {signal} found no registry process");
    }

    /// The registry's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its log is.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.resume_quietly();
        let child = self.child.get_mut().unwrap();
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

impl Registry {
    fn resume_quietly(&self) -> std::io::Result<std::process::ExitStatus> {
        let child = self.child.lock().unwrap();
        Command::new("pkill")
            .args(["-CONT", "-P", &child.id().to_string()])
            .status()
    }
}

/// `tests/tools/registry_tool.py` (confluent-kafka's schema-registry serializers) with `args`;
/// returns stdout, panics with stderr on failure.
pub fn registry_tool(args: &[&str]) -> String {
    try_registry_tool(args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`registry_tool`], its failure returned (to show a pipeline's log beside it).
pub fn try_registry_tool(args: &[&str]) -> Result<String, String> {
    crate::try_python_tool("registry_tool.py", args)
}
