//! `spec.plugin.upgrade: in-place`: which pod's admin endpoint the operator asks next to swap
//! its plugin library (`POST /plugin`), one pod at a time, and when to give up and roll. Pure:
//! the controller reads the pods' `/status` and carries the step out.

use crate::crd::PluginUpgradeStatus;

/// The secret (in the pipeline's namespace) whose `token` the pods get as
/// `SLUICE_ADMIN_TOKEN`; the operator sends the same value, from its own
/// `SLUICE_VPA_UPGRADE_TOKEN`.
pub const TOKEN_SECRET: &str = "sluice-upgrade-token";

/// What a running pod's `/status` says of its plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlugin {
    /// The pod's name.
    pub pod: String,
    /// The sha256 of the library it runs.
    pub sha256: String,
    /// Its last upgrade's outcome (`watching`, `upgraded`, `rolled-back`, `refused`).
    pub outcome: Option<String>,
    /// Why, in one line.
    pub message: Option<String>,
}

impl PodPlugin {
    /// From a pod's name and its `/status` document.
    pub fn from_status(pod: &str, status: &serde_json::Value) -> Option<PodPlugin> {
        let plugin = &status["plugin"];
        Some(PodPlugin {
            pod: pod.to_owned(),
            sha256: plugin["sha256"].as_str()?.to_ascii_lowercase(),
            outcome: plugin["last_upgrade"]["outcome"]
                .as_str()
                .map(str::to_owned),
            message: plugin["last_upgrade"]["message"]
                .as_str()
                .map(str::to_owned),
        })
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every pod that answered runs the wanted library.
    Done,
    /// A pod's new version is on trial (or a pod did not answer): ask again later.
    Wait(String),
    /// Ask this pod to swap.
    Upgrade(String),
    /// The pod asked could not take it: roll every pod instead (why).
    Roll(String),
}

/// The next step towards `wanted` (a sha256), given what the pods say (`None`: a pod that did
/// not answer) and the status kept between reconciles.
pub fn next_step(
    wanted: &str,
    pods: &[(String, Option<PodPlugin>)],
    status: Option<&PluginUpgradeStatus>,
) -> Step {
    let wanted = wanted.to_ascii_lowercase();
    let asked = status
        .filter(|s| s.sha256 == wanted)
        .and_then(|s| s.pod.clone());
    let mut pods: Vec<&(String, Option<PodPlugin>)> = pods.iter().collect();
    pods.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(asked) = &asked {
        if let Some((_, view)) = pods.iter().find(|(name, _)| name == asked) {
            match view {
                None => return Step::Wait(asked.clone()),
                Some(p) if p.sha256 == wanted && p.outcome.as_deref() == Some("watching") => {
                    return Step::Wait(asked.clone());
                }
                Some(p) if p.sha256 != wanted => {
                    let why = p.message.clone().unwrap_or_else(|| "no answer".into());
                    return Step::Roll(format!("pod {asked} did not take it: {why}"));
                }
                Some(_) => {}
            }
        }
    }
    for (name, view) in pods {
        match view {
            None => return Step::Wait(name.clone()),
            Some(p) if p.sha256 != wanted => return Step::Upgrade(name.clone()),
            Some(_) => {}
        }
    }
    Step::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pod(name: &str, sha: &str, outcome: Option<&str>) -> (String, Option<PodPlugin>) {
        (
            name.into(),
            Some(PodPlugin {
                pod: name.into(),
                sha256: sha.into(),
                outcome: outcome.map(str::to_owned),
                message: Some("why".into()),
            }),
        )
    }

    fn asked(pod: &str) -> PluginUpgradeStatus {
        PluginUpgradeStatus {
            sha256: B.into(),
            pod: Some(pod.into()),
            rolled: None,
            message: String::new(),
        }
    }

    #[test]
    fn one_pod_at_a_time_in_name_order_each_after_the_last_ones_trial() {
        let pods = [pod("p-2", A, None), pod("p-1", A, None)];
        assert_eq!(next_step(B, &pods, None), Step::Upgrade("p-1".into()));
        // p-1 swapped and on trial: p-2 waits.
        let pods = [pod("p-1", B, Some("watching")), pod("p-2", A, None)];
        assert_eq!(
            next_step(B, &pods, Some(&asked("p-1"))),
            Step::Wait("p-1".into())
        );
        // p-1 kept it: p-2's turn.
        let pods = [pod("p-1", B, Some("upgraded")), pod("p-2", A, None)];
        assert_eq!(
            next_step(B, &pods, Some(&asked("p-1"))),
            Step::Upgrade("p-2".into())
        );
        let pods = [
            pod("p-1", B, Some("upgraded")),
            pod("p-2", B, Some("upgraded")),
        ];
        assert_eq!(next_step(B, &pods, Some(&asked("p-2"))), Step::Done);
    }

    #[test]
    fn a_pod_that_rolled_back_or_refused_turns_it_into_a_rollout() {
        let pods = [pod("p-1", A, Some("rolled-back")), pod("p-2", A, None)];
        assert_eq!(
            next_step(B, &pods, Some(&asked("p-1"))),
            Step::Roll("pod p-1 did not take it: why".into())
        );
        // An earlier attempt at another sha256 does not count.
        let mut other = asked("p-1");
        other.sha256 = A.into();
        assert_eq!(
            next_step(B, &pods, Some(&other)),
            Step::Upgrade("p-1".into())
        );
    }

    #[test]
    fn a_pod_that_does_not_answer_is_waited_for_and_new_pods_already_run_it() {
        let pods = [("p-1".to_owned(), None), pod("p-2", A, None)];
        assert_eq!(next_step(B, &pods, None), Step::Wait("p-1".into()));
        // A pod started from the new spec runs it already.
        let pods = [pod("p-3", B, None)];
        assert_eq!(next_step(B, &pods, None), Step::Done);
    }

    #[test]
    fn the_status_document_of_a_pod_reads_as_its_plugin() {
        let status = serde_json::json!({"plugin": {"name": "x", "version": "2", "sha256": B.to_uppercase(),
            "last_upgrade": {"from": "x 1", "to": "x 2", "outcome": "watching", "message": "m"}}});
        let view = PodPlugin::from_status("p", &status).unwrap();
        assert_eq!(view.sha256, B);
        assert_eq!(view.outcome.as_deref(), Some("watching"));
        assert_eq!(PodPlugin::from_status("p", &serde_json::json!({})), None);
    }
}
