//! Compiles the OCI `linux.seccomp` profile to classic BPF with seccompiler
//! (pure Rust, no libseccomp) and installs it in the container init.
//!
//! seccompiler builds one filter per (match action, default action) pair, so
//! a profile becomes a small stack of filters, relying on the kernel taking
//! the highest-precedence action of all installed filters:
//! - one filter per non-allow action A: "syscalls of the A-rules → A, else allow";
//! - one default filter: "syscalls of any rule → allow, else default action".
//!
//! A syscall matched by a rule therefore gets that rule's action, and any other
//! syscall gets the default action, as libseccomp does. Unsupported features
//! (SCMP_ACT_NOTIFY, listener paths, flags, non-native architectures) are
//! refused with an error; nothing is ever silently dropped except syscall
//! names this architecture does not have (as libseccomp does).

mod syscalls_x86_64;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not supported by this agent")]
    UnsupportedAction(String),
    #[error("seccomp operator {0:?} is not supported")]
    UnsupportedOperator(String),
    #[error("seccomp argument index {0} is out of range (0-5)")]
    BadArgIndex(u64),
    #[error("seccomp flags {0:?} are not supported by this agent")]
    UnsupportedFlags(Vec<String>),
    #[error("seccomp is only supported on x86_64 by this agent")]
    UnsupportedArch,
    #[error("cannot build seccomp filter: {0}")]
    Build(String),
}

/// The compiled profile: filters to install in order.
#[derive(Debug)]
pub struct CompiledProfile {
    pub filters: Vec<BpfProgram>,
}

fn syscall_number(name: &str) -> Option<i64> {
    syscalls_x86_64::SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

/// Maps an OCI action name (and its errnoRet) to a seccompiler action.
pub fn parse_action(name: &str, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(SeccompError::UnsupportedAction(other.to_string())),
    })
}

fn parse_condition(arg: &protos::oci::LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    if arg.Index > 5 {
        return Err(SeccompError::BadArgIndex(arg.Index));
    }
    let (op, value) = match arg.Op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.Value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.Value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.Value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.Value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.Value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.Value),
        // OCI: value is the mask, valueTwo the datum to compare with.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.Value), arg.ValueTwo),
        other => return Err(SeccompError::UnsupportedOperator(other.to_string())),
    };
    SeccompCondition::new(arg.Index as u8, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SeccompError::Build(e.to_string()))
}

type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

/// Adds "syscall nr matches when `rule` holds (None = always)".
fn merge(map: &mut RuleMap, nr: i64, rule: Option<SeccompRule>) {
    match map.get_mut(&nr) {
        // An unconditional match already covers every rule.
        Some(existing) if existing.is_empty() => {}
        Some(existing) => match rule {
            Some(r) => existing.push(r),
            None => existing.clear(),
        },
        None => {
            map.insert(nr, rule.into_iter().collect());
        }
    }
}

/// Compiles the profile for the running architecture.
pub fn compile(profile: &protos::oci::LinuxSeccomp) -> Result<CompiledProfile, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedArch);
    }
    let unsupported_flags: Vec<String> =
        profile.Flags.iter().filter(|f| f.as_str() != "SECCOMP_FILTER_FLAG_LOG").cloned().collect();
    if !unsupported_flags.is_empty() {
        return Err(SeccompError::UnsupportedFlags(unsupported_flags));
    }
    let default = parse_action(&profile.DefaultAction, None)?;
    // Action groups keyed by the action's BPF return value (stable order).
    let mut groups: BTreeMap<u32, (SeccompAction, RuleMap)> = BTreeMap::new();
    let mut any_rule = RuleMap::new();
    for sc in &profile.Syscalls {
        let errno = sc.has_errnoret().then(|| sc.errnoret());
        let action = parse_action(&sc.Action, errno)?;
        let rule = if sc.Args.is_empty() {
            None
        } else {
            let conds = sc.Args.iter().map(parse_condition).collect::<Result<Vec<_>, _>>()?;
            Some(SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))?)
        };
        for name in &sc.Names {
            let Some(nr) = syscall_number(name) else {
                tracing::debug!(syscall = %name, "seccomp: syscall unknown on this architecture, skipped");
                continue;
            };
            merge(&mut any_rule, nr, rule.clone());
            if action != default && action != SeccompAction::Allow {
                let entry = groups.entry(u32::from(action.clone())).or_insert_with(|| (action.clone(), RuleMap::new()));
                merge(&mut entry.1, nr, rule.clone());
            }
        }
    }
    let arch = TargetArch::x86_64;
    let build = |rules: RuleMap, mismatch: SeccompAction, matched: SeccompAction| -> Result<BpfProgram, SeccompError> {
        let filter =
            SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| SeccompError::Build(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))
    };
    let mut filters = Vec::new();
    for (_, (action, rules)) in groups {
        filters.push(build(rules, SeccompAction::Allow, action)?);
    }
    if default != SeccompAction::Allow {
        filters.push(build(any_rule, default, SeccompAction::Allow)?);
    }
    Ok(CompiledProfile { filters })
}

/// Installs the filters on the calling thread. Does not set no_new_privs
/// (that is the spec's `noNewPrivileges`): without it the caller needs
/// CAP_SYS_ADMIN, so the init installs the profile before dropping caps.
pub fn install(profile: &CompiledProfile, log_flag: bool) -> std::io::Result<()> {
    let flags = if log_flag { libc::SECCOMP_FILTER_FLAG_LOG } else { 0 };
    for prog in &profile.filters {
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        // SAFETY: the kernel copies the program; `prog` outlives the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &fprog as *const libc::sock_fprog)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protos::oci::{LinuxSeccomp, LinuxSeccompArg, LinuxSyscall};

    fn syscall(names: &[&str], action: &str, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
        LinuxSyscall {
            Names: names.iter().map(|s| s.to_string()).collect(),
            Action: action.into(),
            Args: args,
            ..Default::default()
        }
    }

    #[test]
    fn docker_style_profile_compiles_with_arg_conditions() {
        let personality =
            |v: u64| LinuxSeccompArg { Index: 0, Value: v, Op: "SCMP_CMP_EQ".into(), ..Default::default() };
        let clone_ns = LinuxSeccompArg {
            Index: 0,
            Value: 0x7E02_0000,
            ValueTwo: 0,
            Op: "SCMP_CMP_MASKED_EQ".into(),
            ..Default::default()
        };
        let profile = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ERRNO".into(),
            Syscalls: vec![
                syscall(&["read", "write", "exit_group", "not_a_syscall_here"], "SCMP_ACT_ALLOW", vec![]),
                syscall(&["personality"], "SCMP_ACT_ALLOW", vec![personality(0)]),
                syscall(&["personality"], "SCMP_ACT_ALLOW", vec![personality(8)]),
                syscall(&["clone"], "SCMP_ACT_ALLOW", vec![clone_ns]),
                syscall(&["ptrace"], "SCMP_ACT_KILL_PROCESS", vec![]),
            ],
            ..Default::default()
        };
        let compiled = compile(&profile).unwrap();
        // One filter for KILL_PROCESS, one for the default action.
        assert_eq!(compiled.filters.len(), 2);
        assert!(compiled.filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn notify_and_unknown_operators_are_refused_by_name() {
        let notify = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(&["mkdir"], "SCMP_ACT_NOTIFY", vec![])],
            ..Default::default()
        };
        assert_eq!(compile(&notify).unwrap_err(), SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY".into()));
        let bad_op = LinuxSeccompArg { Index: 0, Op: "SCMP_CMP_REGEX".into(), ..Default::default() };
        let prof = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(&["mkdir"], "SCMP_ACT_ERRNO", vec![bad_op])],
            ..Default::default()
        };
        assert!(matches!(compile(&prof), Err(SeccompError::UnsupportedOperator(_))));
        let bad_idx = LinuxSeccompArg { Index: 9, Op: "SCMP_CMP_EQ".into(), ..Default::default() };
        let prof = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(&["mkdir"], "SCMP_ACT_ERRNO", vec![bad_idx])],
            ..Default::default()
        };
        assert_eq!(compile(&prof).unwrap_err(), SeccompError::BadArgIndex(9));
    }

    #[test]
    fn allow_by_default_with_errno_rules_is_one_filter() {
        let prof = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(&["mkdir", "mkdirat"], "SCMP_ACT_ERRNO", vec![])],
            ..Default::default()
        };
        assert_eq!(compile(&prof).unwrap().filters.len(), 1);
    }
}
