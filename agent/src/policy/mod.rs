//! The agent's request policy: every AgentService request is checked against a
//! Rego policy before its handler runs, exactly as kata's agent checks it
//! (`data.agent_policy.<RequestMessageName>` over the request as JSON), so
//! policies that kata's genpolicy generates work unchanged.
//!
//! The policy is the tenant's, measured through initdata; the host only sends
//! requests. Nothing here ever fails open: an undefined rule, an evaluation
//! error or a malformed result refuses the request.
//!
//! Where the policy comes from (`load_startup_policy`): the file baked into
//! the image (`/etc/kata-opa/default-policy.rego`), replaced by initdata's
//! `policy.rego` when present, and later by SetPolicy only when the policy in
//! force allows `SetPolicyRequest`.

pub mod audit;
pub mod engine;
pub mod input;

use std::path::Path;

use protobuf::MessageFull;
use serde::Serialize;

pub use audit::Verdict;
pub use engine::{Decision, PolicyEngine, PolicyError, PolicyInfo, PolicyOrigin};

/// The image's policy, as in kata.
pub const DEFAULT_POLICY_FILE: &str = "/etc/kata-opa/default-policy.rego";

/// The policy in force and its decision counters.
pub struct AgentPolicy {
    engine: PolicyEngine,
    counters: audit::Counters,
}

macro_rules! request_names {
    ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
        /// Rule name of every AgentService method's request, in table order.
        fn request_rules() -> Vec<String> {
            vec![$(input::endpoint::<$req>(),)*]
        }
    };
}
protos::with_agent_rpcs!(request_names);

impl AgentPolicy {
    pub fn new(engine: PolicyEngine) -> AgentPolicy {
        let policy = AgentPolicy { engine, counters: audit::Counters::default() };
        policy.announce();
        policy
    }

    /// The policy the agent starts with: the file at `path`, replaced by
    /// initdata's `policy.rego` when given. A policy that does not load is an
    /// error: the agent must not serve without one.
    pub fn load_startup_policy(path: &Path, initdata_policy: Option<&str>) -> Result<AgentPolicy, PolicyError> {
        let engine = match initdata_policy {
            Some(rego) => PolicyEngine::new(PolicyOrigin::Initdata, rego)?,
            None => PolicyEngine::from_file(path)?,
        };
        Ok(AgentPolicy::new(engine))
    }

    pub fn info(&self) -> PolicyInfo {
        self.engine.info()
    }

    /// Checks `req` (sent to `method`) before its handler runs. A denial is
    /// PERMISSION_DENIED with kata's message shape plus the policy's prints;
    /// a policy that cannot decide is INTERNAL. Both refuse the request.
    pub fn check<R: MessageFull + Serialize>(&self, method: &'static str, req: &R) -> Result<(), ttrpc::Error> {
        let rule = input::endpoint::<R>();
        let decision =
            input::of(req).map_err(|reason| PolicyError::Input { endpoint: rule.clone(), reason }).and_then(|input| {
                let container = audit::container_id(&input).to_owned();
                self.engine.decide(&rule, input).map(|d| (d, container))
            });
        match decision {
            Ok((d, container_id)) if d.allowed => {
                self.counters.record(method, Verdict::Allow);
                if d.forced {
                    tracing::warn!(target: audit::TARGET, method, rule = %rule, container_id, decision = "allow",
                        "request denied by the policy but allowed by AllowRequestsFailingPolicy");
                } else {
                    tracing::info!(target: audit::TARGET, method, rule = %rule, container_id, decision = "allow", "policy");
                }
                Ok(())
            }
            Ok((d, container_id)) => {
                self.counters.record(method, Verdict::Deny);
                let why = if d.undefined { format!("data.agent_policy.{rule} is undefined") } else { d.prints };
                tracing::warn!(target: audit::TARGET, method, rule = %rule, container_id, decision = "deny", policy_output = %why, "policy");
                Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::PERMISSION_DENIED,
                    format!("{rule} is blocked by policy: {why}"),
                )))
            }
            Err(err) => {
                self.counters.record(method, Verdict::Error);
                tracing::error!(target: audit::TARGET, method, rule = %rule, decision = "error", %err, "policy");
                Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INTERNAL,
                    format!("{rule}: policy check failed, request refused: {err}"),
                )))
            }
        }
    }

    /// Replaces the policy (SetPolicy, after `check` allowed it).
    pub fn set_policy(&self, rego: &str) -> Result<PolicyInfo, PolicyError> {
        let info = self.engine.replace(PolicyOrigin::SetPolicy, rego)?;
        self.announce();
        Ok(info)
    }

    pub fn counters(&self) -> &audit::Counters {
        &self.counters
    }

    /// Logs which policy is in force, loudly when it lets the host do anything.
    fn announce(&self) {
        let info = self.engine.info();
        let rules = request_rules();
        let open: Vec<&str> =
            rules.iter().filter(|r| self.engine.would_allow(r, serde_json::json!({}))).map(String::as_str).collect();
        tracing::info!(target: audit::TARGET, origin = %info.origin, sha256 = %info.sha256,
            allowed_without_fields = open.len(), rules = rules.len(), "agent policy in force");
        if open.len() == rules.len() {
            tracing::warn!(target: audit::TARGET, origin = %info.origin,
                "ALLOW-ALL POLICY: every agent request is allowed; the host can exec into containers, read their \
                 output and replace the policy. For development only, never for a confidential workload");
        }
        if info.allow_failures {
            tracing::warn!(target: audit::TARGET, origin = %info.origin,
                "the policy sets AllowRequestsFailingPolicy: denials are logged but NOT enforced");
        }
    }
}
