//! A Kubernetes control plane for the operator's tests: etcd, kube-apiserver and
//! kube-controller-manager on 127.0.0.1, built from the Go module proxy by `make deps` and
//! started by `scripts/kube-control-plane.sh` under a [`watchdog`](crate::watchdog) that stops
//! all three and deletes their storage when the test process ends. No scheduler and no kubelet
//! run: [`crate::kubelet`] plays both through the API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cache_dir, free_port, root};

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// A kubeconfig with a `system:masters` token.
    pub admin: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl ControlPlane {
    /// Starts etcd, the API server (extra `apiserver_flags`) and the controller manager; returns
    /// once the API server is ready.
    pub fn start(apiserver_flags: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // etcd takes ETCD and ETCD+1 (peers).
        let etcd = loop {
            let p = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut line = format!(
            "setsid '{}' '{}' {port} {etcd} --",
            root().join("scripts/kube-control-plane.sh").display(),
            dir.path().display()
        );
        for flag in apiserver_flags {
            line.push_str(&format!(" '{flag}'"));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(group_watchdog(&line, dir.path()))
            .env("SLUICE_CACHE", cache_dir())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the control plane");
        let mut plane = ControlPlane {
            server: format!("https://127.0.0.1:{port}"),
            admin: dir.path().join("admin.kubeconfig"),
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !plane.admin.exists() {
            assert!(
                plane.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "the control plane did not start: see {}/apiserver.log (run `make deps` if it was never built)",
                plane.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        plane
    }

    /// `kubectl` as the admin, with `args`; returns stdout, panics with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_as(&self.admin, args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// `kubectl` with `kubeconfig`: stdout, or stderr on failure.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("kubectl is installed by `make deps`");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A token of ServiceAccount `name` in `namespace` from the TokenRequest API: what a pod
    /// running as it holds.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.kubectl(&["-n", namespace, "create", "token", name, "--duration", "1h"])
            .trim()
            .to_owned()
    }

    /// One request to the API server with `token` (curl): the status code and the body. For
    /// requests exactly as a client sends them (kubectl adds reads of its own).
    pub fn request(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String) {
        self.client(token).request(method, path, content_type, body)
    }

    /// A client of the API server holding `token`.
    pub fn client(&self, token: &str) -> ApiClient {
        ApiClient {
            server: self.server.clone(),
            ca: self.dir.path().join("pki/ca.crt"),
            token: token.to_owned(),
        }
    }

    /// A kubeconfig for ServiceAccount `name` in `namespace` (a token from the TokenRequest
    /// API): what a pod running as it would hold.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name);
        let path = self
            .dir
            .path()
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\nusers: [{{name: {name}, user: {{token: '{}'}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: {name}, namespace: {namespace}}}}}]\ncurrent-context: test\n",
                self.server,
                self.dir.path().join("pki/ca.crt").display(),
                token.trim()
            ),
        )
        .unwrap();
        path
    }

    /// The admin's bearer token (`system:masters`).
    pub fn admin_token(&self) -> String {
        let tokens = std::fs::read_to_string(self.dir.path().join("pki/tokens.csv")).unwrap();
        tokens.split(',').next().unwrap_or_default().to_owned()
    }

    /// The directory with the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Requests to a control plane's API server with a bearer token, through curl.
#[derive(Debug, Clone)]
pub struct ApiClient {
    server: String,
    ca: PathBuf,
    token: String,
}

impl ApiClient {
    /// One request: the status code and the body (none sent when `body` is empty).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String) {
        let mut command = Command::new("curl");
        command
            .args(["-s", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", &format!("Content-Type: {content_type}")]);
        if !body.is_empty() {
            command.args(["--data-binary", body]);
        }
        let out = command
            .arg(format!("{}{path}", self.server))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The watchdog sees the script go and removes the storage once this process ends.
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// [`crate::watchdog`] for a server that starts children of its own: it runs in a session of
/// its own (`setsid`), and the whole process group is killed. `kill -9 -PGID`, not
/// `kill -9 -- -PGID`: dash (Debian's `sh`) refuses the `--`, and then `wait` waits for ever
/// on a plane left running (a static plane, whose `Drop` never runs, outlived the tests).
fn group_watchdog(server: &str, dir: &Path) -> String {
    format!(
        "{server} & b=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.5; done; kill -9 -$b 2>/dev/null; wait $b; \
         kill -0 {parent} 2>/dev/null || rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display()
    )
}
