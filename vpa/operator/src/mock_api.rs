//! Test support: a mocked Kubernetes API server (tower-test) answered request by request, the
//! API's error objects, and the operator's RBAC as committed in `deploy/operator/`.

use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// The server side of a mocked API.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client talking to a mocked API, and the handle that answers it.
pub fn client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the client sent it.
#[derive(Debug)]
pub struct Sent {
    /// The query string.
    pub query: String,
    /// The `content-type` header.
    pub content_type: Option<String>,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

/// Waits for the next request, checks its method and path, answers `status` with `reply` (or
/// echoes the body) and returns what was sent.
pub async fn answer(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    reply: Option<Value>,
) -> Sent {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("the client is gone");
    assert_eq!(
        (request.method().as_str(), request.uri().path()),
        (method, path),
        "request out of order"
    );
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let reply = reply.unwrap_or_else(|| body.clone());
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    Sent {
        query,
        content_type,
        body,
    }
}

/// An API error object (`kind: Status`).
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": message})
}

/// The object of `kind` in `deploy/operator/operator.yaml`.
pub fn operator_object(kind: &str) -> Value {
    let text =
        std::fs::read_to_string(sluice_vpa::repo::path("deploy/operator/operator.yaml")).unwrap();
    assert!(
        !text.contains("secrets"),
        "the operator must not read Secrets"
    );
    text.split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).unwrap())
        .find(|doc| doc["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/operator/operator.yaml has no {kind}"))
}

/// Whether an RBAC role grants `verb` on `group/resource` (for the object `name`: a rule with
/// `resourceNames` grants only those objects).
pub fn grants(role: &Value, group: &str, resource: &str, name: Option<&str>, verb: &str) -> bool {
    role["rules"].as_array().unwrap().iter().any(|rule| {
        let has = |key: &str, want: &str| rule[key].as_array().unwrap().iter().any(|v| v == want);
        let named = match rule["resourceNames"].as_array() {
            None => true,
            Some(names) => name.is_some_and(|n| names.iter().any(|v| v == n)),
        };
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb) && named
    })
}

/// One call's need: group, resource, the object's name when it has one, verb.
pub type Need = (String, String, Option<String>, &'static str);

/// Checks `role` against what was called, both ways: every need is granted, and every grant is
/// needed (a rule limited by `resourceNames` by a call on one of those names).
pub fn grants_exactly(role: &Value, what: &str, needed: &[Need]) {
    for (group, resource, name, verb) in needed {
        assert!(
            grants(role, group, resource, name.as_deref(), verb),
            "{what}: does not grant {verb} on {group}/{resource} {}",
            name.as_deref().unwrap_or("")
        );
    }
    for rule in role["rules"].as_array().unwrap() {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|l| l.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let names = list("resourceNames");
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    let used = |name: Option<&String>| {
                        needed.iter().any(|(g, r, n, v)| {
                            *g == group
                                && *r == resource
                                && *v == verb
                                && name.is_none_or(|name| n.as_ref() == Some(name))
                        })
                    };
                    let unused: Vec<&String> = names.iter().filter(|n| !used(Some(n))).collect();
                    assert!(
                        if names.is_empty() {
                            used(None)
                        } else {
                            unused.is_empty()
                        },
                        "{what}: grants {verb} on {group}/{resource} {unused:?}, which nothing calls: drop it"
                    );
                }
            }
        }
    }
}
