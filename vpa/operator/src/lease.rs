//! Leader election over a `coordination.k8s.io/v1` Lease, so the operator can run more than one
//! replica and only one reconciles. kube-rs has no built-in elector; this is the usual protocol:
//! a candidate takes the Lease when it is free or its holder stopped renewing for
//! `leaseDurationSeconds`, the holder renews it well within that, and every write carries the
//! `resourceVersion` it read, so two candidates racing cannot both win (the loser gets 409).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// There is none: create it, held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Its holder stopped renewing (or released it): take it over.
    TakeOver,
    /// Someone else holds it.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease (if any), who we are, and now.
pub fn step(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Step::TakeOver
        } else {
            Step::Create
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map_or(0, |t| t.0.as_second());
    if holder.is_empty() || now.as_second() > renewed + duration {
        Step::TakeOver
    } else {
        Step::Wait { holder }
    }
}

/// Whether we hold the Lease after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// We hold it (acquired or renewed).
    Yes,
    /// Someone else does.
    By(String),
}

/// A Lease that elects one leader among the operator's replicas.
#[derive(Debug, Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// The Lease `name` in `api`'s namespace, for the candidate `identity` (the pod name).
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// How long a holder keeps the Lease without renewing.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Acquires or renews the Lease if it can. Losing a race (409) is "held by someone else".
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Held, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let step = step(current.as_ref(), &self.identity, now);
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let old = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let transitions = old.lease_transitions.unwrap_or(0);
        let written = match &step {
            Step::Wait { holder } => return Ok(Held::By(holder.clone())),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec(0, None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Renew | Step::TakeOver => {
                let mut lease = current.clone().expect("renew and take over read a Lease");
                lease.spec = Some(match step {
                    Step::Renew => spec(transitions, old.acquire_time.clone()),
                    _ => spec(transitions + 1, None),
                });
                // `metadata.resourceVersion` stays as read: a concurrent write makes this a 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Held::Yes),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Held::By("another replica (lost the race)".into()))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn lease(holder: &str, renewed: i64) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "sluice-vpa", "namespace": "sluice-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": at(renewed).to_string(), "leaseTransitions": 2},
        }))
        .unwrap()
    }

    #[test]
    fn the_lease_goes_to_whoever_may_have_it() {
        let now = 1_800_000_000;
        assert_eq!(step(None, "a", at(now)), Step::Create);
        assert_eq!(step(Some(&lease("a", now - 5)), "a", at(now)), Step::Renew);
        assert_eq!(
            step(Some(&lease("b", now - 5)), "a", at(now)),
            Step::Wait { holder: "b".into() }
        );
        // Exactly at the end of the duration it is still b's; a second later it is free.
        assert!(matches!(
            step(Some(&lease("b", now - 15)), "a", at(now)),
            Step::Wait { .. }
        ));
        assert_eq!(
            step(Some(&lease("b", now - 16)), "a", at(now)),
            Step::TakeOver
        );
        // Released (no holder).
        assert_eq!(step(Some(&lease("", now)), "a", at(now)), Step::TakeOver);
    }

    /// Request by request against a mocked API server: create when absent, wait while another
    /// replica renews, take over when it stops (with the resourceVersion read, transitions + 1),
    /// and a lost race (409) is not an error.
    #[tokio::test]
    async fn acquire_wait_take_over_and_lose_a_race() {
        use crate::mock_api::{self, answer, failure};
        let (client, mut server) = mock_api::client();
        let api: Api<Lease> = Api::namespaced(client, "sluice-system");
        let lock = LeaseLock::new(api, "sluice-vpa", "pod-a", Duration::from_secs(15));
        let lease_path = "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-vpa";
        let now = 1_800_000_000;
        // One attempt: spawned, then its read of the Lease answered with `read`.
        let spawn = || {
            let lock = lock.clone();
            tokio::spawn(async move { lock.try_acquire_or_renew(at(now)).await })
        };
        let read = async |server: &mut mock_api::Handle, status: u16, read: Value| {
            answer(server, "GET", lease_path, status, Some(read)).await;
        };

        // None yet: created, held by us.
        let task = spawn();
        read(&mut server, 404, failure(404, "NotFound", "not found")).await;
        let created = answer(
            &mut server,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases",
            201,
            None,
        )
        .await
        .body;
        assert_eq!(created["spec"]["holderIdentity"], "pod-a");
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(task.await.unwrap().unwrap(), Held::Yes);

        // Another replica renews it: we wait, and write nothing.
        let held = serde_json::to_value(lease("pod-b", now - 3)).unwrap();
        let task = spawn();
        read(&mut server, 200, held).await;
        assert_eq!(task.await.unwrap().unwrap(), Held::By("pod-b".into()));

        // It stopped renewing 20 s ago: taken over with the resourceVersion read.
        let stale = serde_json::to_value(lease("pod-b", now - 20)).unwrap();
        let task = spawn();
        read(&mut server, 200, stale.clone()).await;
        let taken = answer(&mut server, "PUT", lease_path, 200, None).await.body;
        assert_eq!(taken["metadata"]["resourceVersion"], "7");
        assert_eq!(taken["spec"]["holderIdentity"], "pod-a");
        assert_eq!(taken["spec"]["leaseTransitions"], 3);
        assert_eq!(task.await.unwrap().unwrap(), Held::Yes);

        // Someone else took it first: 409, not an error.
        let task = spawn();
        read(&mut server, 200, stale).await;
        let conflict = failure(409, "Conflict", "the object has been modified");
        answer(&mut server, "PUT", lease_path, 409, Some(conflict)).await;
        assert!(matches!(task.await.unwrap().unwrap(), Held::By(_)));

        // deploy/operator's Role grants exactly these calls (GET, POST, PUT) on its Lease, and
        // the GET of the placement ConfigMap (main.rs), by name where a name can be checked.
        let role = mock_api::operator_object("Role");
        assert_eq!(role["metadata"]["namespace"], "sluice-system");
        let need = |group: &str, resource: &str, name: Option<&str>, verb| {
            (
                group.to_owned(),
                resource.to_owned(),
                name.map(str::to_owned),
                verb,
            )
        };
        mock_api::grants_exactly(
            &role,
            "deploy/operator/operator.yaml: the Role",
            &[
                need("coordination.k8s.io", "leases", Some("sluice-vpa"), "get"),
                need(
                    "coordination.k8s.io",
                    "leases",
                    Some("sluice-vpa"),
                    "update",
                ),
                // A create is authorized before the object has a name.
                need("coordination.k8s.io", "leases", None, "create"),
                need("", "configmaps", Some("sluice-placement"), "get"),
            ],
        );
        assert!(!mock_api::grants(
            &role,
            "coordination.k8s.io",
            "leases",
            Some("other"),
            "update"
        ));
    }
}
