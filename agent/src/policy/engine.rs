//! The Rego engine behind the request policy: kata's semantics on regorus.
//!
//! A request named `E` (its protobuf message name, e.g. `CreateContainerRequest`)
//! is allowed when `data.agent_policy.E` is `true`, or an object
//! `{"allowed": true, "ops": [...]}` whose RFC 6902 `ops` are then applied to
//! the policy state (`data.pstate`, which starts as `{}`). Anything else, an
//! undefined rule included, is a denial: this module never fails open, except
//! where the policy itself says `AllowRequestsFailingPolicy := true` (kata's
//! debugging switch, logged on every use).
//!
//! Concurrency: a loaded policy is an immutable, already-prepared snapshot.
//! Each check evaluates on a cheap clone of it, so checks of different
//! requests never wait for each other. Only a decision that changes the state
//! takes the update lock; it re-evaluates if another state change landed
//! since its snapshot, so state-changing decisions are serialised exactly as
//! kata's single policy mutex serialises them.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use regorus::utils::limits::{ExecutionTimerConfig, PolicyLengthConfig};
use sha2::{Digest, Sha256};

/// Limits kata sets on regorus: genpolicy output has lines over 1 KiB (long
/// environment values) and files of several MiB.
const MAX_COL: u32 = 64 * 1024;
const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
const MAX_LINES: usize = 200_000;

/// One evaluation may not run longer than this; past it the request is
/// refused (an input crafted to make the rules loop must not stall the agent).
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The package every agent policy declares.
const PACKAGE: &str = "agent_policy";

/// Where the policy in force came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOrigin {
    /// The policy file baked into the guest image (or given to a non-PID-1 agent).
    File(std::path::PathBuf),
    /// `policy.rego` of the measured initdata.
    Initdata,
    /// A SetPolicy request the previous policy allowed.
    SetPolicy,
    /// Tests and benchmarks.
    Inline(&'static str),
}

impl std::fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyOrigin::File(p) => write!(f, "file {}", p.display()),
            PolicyOrigin::Initdata => f.write_str("initdata policy.rego"),
            PolicyOrigin::SetPolicy => f.write_str("SetPolicy"),
            PolicyOrigin::Inline(name) => write!(f, "inline policy {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("the policy from {origin} does not load: {reason}")]
    Load { origin: PolicyOrigin, reason: String },
    #[error("evaluating data.{PACKAGE}.{endpoint} failed: {reason}")]
    Eval { endpoint: String, reason: String },
    #[error("data.{PACKAGE}.{endpoint} is neither a bool nor {{\"allowed\", \"ops\"}}: {got}")]
    Shape { endpoint: String, got: String },
    #[error("applying the state ops of data.{PACKAGE}.{endpoint} failed: {reason}")]
    State { endpoint: String, reason: String },
    #[error("building the policy input of {endpoint}: {reason}")]
    Input { endpoint: String, reason: String },
}

/// What the policy said about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policy's `print` output during this evaluation, space-separated.
    pub prints: String,
    /// The rule was undefined (no rule and no default for this request).
    pub undefined: bool,
    /// Denied by the rules but allowed by `AllowRequestsFailingPolicy`.
    pub forced: bool,
}

/// A loaded, prepared policy and its state.
#[derive(Clone)]
struct Loaded {
    engine: regorus::Engine,
    origin: PolicyOrigin,
    sha256: String,
    allow_failures: bool,
}

/// The policy in force, shared by every request.
pub struct PolicyEngine {
    current: RwLock<Arc<Loaded>>,
    /// Serialises state changes and policy replacement (never plain checks).
    update: Mutex<()>,
}

/// Summary of the policy in force, for logs and GuestDetails-like reports.
#[derive(Clone, Debug)]
pub struct PolicyInfo {
    pub origin: PolicyOrigin,
    pub sha256: String,
    pub allow_failures: bool,
}

fn new_engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    // A builtin error (a bad regex, a type error) makes the expression
    // undefined, as in OPA, instead of failing the whole query: kata does the
    // same, and genpolicy's rules rely on it.
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: NonZeroU32::new(MAX_COL).unwrap_or(NonZeroU32::MIN),
        max_file_bytes: NonZeroUsize::new(MAX_FILE_BYTES).unwrap_or(NonZeroUsize::MIN),
        max_lines: NonZeroUsize::new(MAX_LINES).unwrap_or(NonZeroUsize::MIN),
    });
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    });
    engine
}

/// Prepares `engine` in place (rule analysis, schedules, loop hoisting), which
/// regorus otherwise redoes on the first evaluation after any change. Every
/// check evaluates on a clone of a prepared engine, and a clone keeps the
/// preparation: without this, each check would redo it (measured: 165 µs for a
/// trivial rule of the confidential policy, 2 ms with kata's genpolicy rules).
fn prepare(engine: &mut regorus::Engine) -> anyhow::Result<()> {
    engine.set_input(regorus::Value::new_object());
    engine.eval_query(query("AllowRequestsFailingPolicy"), false)?;
    let _ = engine.take_prints();
    Ok(())
}

fn query(endpoint: &str) -> String {
    format!("data.{PACKAGE}.{endpoint}")
}

/// The raw verdict of one evaluation, before `AllowRequestsFailingPolicy`.
struct Outcome {
    allowed: bool,
    undefined: bool,
    ops: Option<json_patch::Patch>,
    prints: String,
}

impl Loaded {
    fn load(origin: PolicyOrigin, rego: &str) -> Result<Loaded, PolicyError> {
        let load_err = |reason: String| PolicyError::Load { origin: origin.clone(), reason };
        let mut engine = new_engine();
        engine.add_policy(format!("{origin}"), rego.to_owned()).map_err(|e| load_err(format!("{e:#}")))?;
        let packages = engine.get_packages().map_err(|e| load_err(format!("{e:#}")))?;
        if !packages.iter().any(|p| p == &format!("data.{PACKAGE}")) {
            return Err(load_err(format!("it declares {packages:?}, not `package {PACKAGE}`")));
        }
        engine
            .add_data(regorus::Value::from(serde_json::json!({ "pstate": {} })))
            .map_err(|e| load_err(format!("{e:#}")))?;
        prepare(&mut engine).map_err(|e| load_err(format!("{e:#}")))?;
        let mut loaded = Loaded {
            engine,
            origin: origin.clone(),
            sha256: hex::encode(Sha256::digest(rego.as_bytes())),
            allow_failures: false,
        };
        let probe = loaded
            .evaluate("AllowRequestsFailingPolicy", regorus::Value::new_object())
            .map_err(|e| load_err(e.to_string()))?;
        loaded.allow_failures = probe.allowed && !probe.undefined;
        Ok(loaded)
    }

    /// Evaluates on a clone: the snapshot itself is never touched.
    fn evaluate(&self, endpoint: &str, input: regorus::Value) -> Result<Outcome, PolicyError> {
        let eval_err = |reason: String| PolicyError::Eval { endpoint: endpoint.to_owned(), reason };
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let results = engine.eval_query(query(endpoint), false);
        let prints = engine.take_prints().map(|p| p.join(" ")).unwrap_or_default();
        let results = results.map_err(|e| eval_err(format!("{e:#}")))?;
        let value = match results.result.as_slice() {
            [] => return Ok(Outcome { allowed: false, undefined: true, ops: None, prints }),
            [one] => match one.expressions.as_slice() {
                [expr] => expr.value.clone(),
                more => return Err(eval_err(format!("{} expressions in the result", more.len()))),
            },
            more => return Err(eval_err(format!("{} results (the rule is not a single value)", more.len()))),
        };
        let shape_err = || PolicyError::Shape { endpoint: endpoint.to_owned(), got: value.to_string() };
        match &value {
            regorus::Value::Bool(b) => Ok(Outcome { allowed: *b, undefined: false, ops: None, prints }),
            regorus::Value::Undefined => Ok(Outcome { allowed: false, undefined: true, ops: None, prints }),
            regorus::Value::Object(_) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Metadata {
                    allowed: bool,
                    #[serde(default)]
                    ops: Option<json_patch::Patch>,
                }
                let json = serde_json::to_value(&value).map_err(|_| shape_err())?;
                let m: Metadata = serde_json::from_value(json).map_err(|_| shape_err())?;
                let ops = m.ops.filter(|ops| m.allowed && !ops.0.is_empty());
                Ok(Outcome { allowed: m.allowed, undefined: false, ops, prints })
            }
            _ => Err(shape_err()),
        }
    }

    /// A new snapshot with `ops` applied to the data document.
    fn with_ops(&self, endpoint: &str, ops: &json_patch::Patch) -> Result<Loaded, PolicyError> {
        let state_err = |reason: String| PolicyError::State { endpoint: endpoint.to_owned(), reason };
        let mut data = serde_json::to_value(self.engine.get_data()).map_err(|e| state_err(e.to_string()))?;
        json_patch::patch(&mut data, ops).map_err(|e| state_err(e.to_string()))?;
        let mut next = self.clone();
        next.engine.clear_data();
        next.engine.add_data(regorus::Value::from(data)).map_err(|e| state_err(format!("{e:#}")))?;
        prepare(&mut next.engine).map_err(|e| state_err(format!("{e:#}")))?;
        Ok(next)
    }
}

impl PolicyEngine {
    /// Loads a policy; an error names the origin and the first problem.
    pub fn new(origin: PolicyOrigin, rego: &str) -> Result<PolicyEngine, PolicyError> {
        let loaded = Loaded::load(origin, rego)?;
        Ok(PolicyEngine { current: RwLock::new(Arc::new(loaded)), update: Mutex::new(()) })
    }

    /// Loads the policy file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<PolicyEngine, PolicyError> {
        let rego = read_policy_file(path)?;
        Self::new(PolicyOrigin::File(path.to_owned()), &rego)
    }

    fn snapshot(&self) -> Arc<Loaded> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, loaded: Loaded) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
    }

    pub fn info(&self) -> PolicyInfo {
        let s = self.snapshot();
        PolicyInfo { origin: s.origin.clone(), sha256: s.sha256.clone(), allow_failures: s.allow_failures }
    }

    /// Replaces the policy and resets its state, as kata's SetPolicy does.
    /// On error the policy in force stays.
    pub fn replace(&self, origin: PolicyOrigin, rego: &str) -> Result<PolicyInfo, PolicyError> {
        let loaded = Loaded::load(origin, rego)?;
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        self.publish(loaded);
        drop(_guard);
        Ok(self.info())
    }

    /// The policy's verdict on `input` for the rule `endpoint`.
    pub fn decide(&self, endpoint: &str, input: serde_json::Value) -> Result<Decision, PolicyError> {
        let input = regorus::Value::from(input);
        let snap = self.snapshot();
        let mut outcome = snap.evaluate(endpoint, input.clone())?;
        let mut allow_failures = snap.allow_failures;
        if let Some(ops) = outcome.ops.take() {
            let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
            // Every state change and every replacement publishes a new Arc:
            // the same pointer means nothing moved since `snap` was taken.
            let current = self.snapshot();
            let ops = if Arc::ptr_eq(&current, &snap) {
                Some(ops)
            } else {
                // The state (or the policy) changed under us: decide again on
                // what is in force now.
                outcome = current.evaluate(endpoint, input)?;
                allow_failures = current.allow_failures;
                outcome.ops.take()
            };
            if let Some(ops) = ops {
                let next = current.with_ops(endpoint, &ops)?;
                self.publish(next);
            }
        }
        let forced = !outcome.allowed && allow_failures;
        Ok(Decision {
            allowed: outcome.allowed || forced,
            prints: outcome.prints,
            undefined: outcome.undefined,
            forced,
        })
    }

    /// Whether the policy would allow `input` for `endpoint`, without applying
    /// any state change (diagnostics: the allow-all warning).
    pub fn would_allow(&self, endpoint: &str, input: serde_json::Value) -> bool {
        self.snapshot().evaluate(endpoint, regorus::Value::from(input)).is_ok_and(|o| o.allowed)
    }

    /// The state document (`data.pstate`), for tests and diagnostics.
    pub fn state(&self) -> serde_json::Value {
        let data = serde_json::to_value(self.snapshot().engine.get_data()).unwrap_or_default();
        data.get("pstate").cloned().unwrap_or_default()
    }
}

/// Reads a policy file, bounded by the engine's own size limit.
pub fn read_policy_file(path: &std::path::Path) -> Result<String, PolicyError> {
    use std::io::Read;
    let read_err = |source| PolicyError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_string(&mut text).map_err(read_err)?;
    if text.len() > MAX_FILE_BYTES {
        return Err(read_err(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes"))));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTER: &str = r#"
package agent_policy
import rego.v1

default CreateContainerRequest := false
default ExecProcessRequest := false

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    not data.pstate[input.container_id]
    ops := [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": 1}]
}

ExecProcessRequest if {
    print("exec into", input.container_id)
    data.pstate[input.container_id] == 1
}
"#;

    fn engine(rego: &str) -> PolicyEngine {
        PolicyEngine::new(PolicyOrigin::Inline("test"), rego).expect("policy loads")
    }

    #[test]
    fn ops_of_an_allowed_request_change_the_state_later_requests_see() {
        let p = engine(COUNTER);
        let exec = serde_json::json!({"container_id": "c1"});
        assert!(!p.decide("ExecProcessRequest", exec.clone()).unwrap().allowed);
        assert!(p.decide("CreateContainerRequest", serde_json::json!({"container_id": "c1"})).unwrap().allowed);
        assert_eq!(p.state(), serde_json::json!({"c1": 1}));
        let d = p.decide("ExecProcessRequest", exec).unwrap();
        assert!(d.allowed);
        assert!(d.prints.ends_with("exec into c1"), "{}", d.prints);
        // The same id again: the rule's `not data.pstate[...]` now fails.
        assert!(!p.decide("CreateContainerRequest", serde_json::json!({"container_id": "c1"})).unwrap().allowed);
    }

    #[test]
    fn concurrent_state_changes_are_serialised_not_lost() {
        let p = Arc::new(engine(COUNTER));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    // Every thread races for the same id and for its own.
                    let same =
                        p.decide("CreateContainerRequest", serde_json::json!({"container_id": "shared"})).unwrap();
                    let own = p
                        .decide("CreateContainerRequest", serde_json::json!({"container_id": format!("c{i}")}))
                        .unwrap();
                    assert!(own.allowed);
                    same.allowed
                })
            })
            .collect();
        let winners = threads.into_iter().map(|t| t.join().unwrap()).filter(|w| *w).count();
        assert_eq!(winners, 1, "exactly one CreateContainer of the same id may pass");
        assert_eq!(p.state().as_object().unwrap().len(), 9);
    }

    #[test]
    fn undefined_rules_and_odd_results_are_denials_or_errors_never_allows() {
        let p = engine(
            "package agent_policy\nStatsContainerRequest := 7\nPauseContainerRequest := {\"allowed\": \"yes\"}\n",
        );
        let d = p.decide("ExecProcessRequest", serde_json::json!({})).unwrap();
        assert!(!d.allowed && d.undefined);
        assert!(matches!(p.decide("StatsContainerRequest", serde_json::json!({})), Err(PolicyError::Shape { .. })));
        assert!(matches!(p.decide("PauseContainerRequest", serde_json::json!({})), Err(PolicyError::Shape { .. })));
    }

    #[test]
    fn allow_requests_failing_policy_forces_denials_to_allows_and_says_so() {
        let p =
            engine("package agent_policy\ndefault ExecProcessRequest := false\nAllowRequestsFailingPolicy := true\n");
        assert!(p.info().allow_failures);
        let d = p.decide("ExecProcessRequest", serde_json::json!({})).unwrap();
        assert!(d.allowed && d.forced);
    }

    #[test]
    fn policies_that_do_not_load_name_the_problem() {
        for (rego, needle) in
            [("package other\nx := 1\n", "package agent_policy"), ("package agent_policy\nthis is not rego(\n", "test")]
        {
            let err = PolicyEngine::new(PolicyOrigin::Inline("test"), rego).err().expect("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_replaced_policy_starts_with_empty_state() {
        let p = engine(COUNTER);
        assert!(p.decide("CreateContainerRequest", serde_json::json!({"container_id": "c1"})).unwrap().allowed);
        p.replace(PolicyOrigin::SetPolicy, COUNTER).unwrap();
        assert_eq!(p.state(), serde_json::json!({}));
        assert_eq!(p.info().origin, PolicyOrigin::SetPolicy);
    }
}
