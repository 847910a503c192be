//! The compiled device program is checked two ways: by a small interpreter of
//! the instructions it uses (every rule shape, no root needed), and by the
//! kernel itself: loaded, attached to a real cgroup v2 directory, with a
//! process inside opening device nodes (root only).

use super::*;
use protos::oci::LinuxDeviceCgroup;

fn rule(allow: bool, t: &str, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
    LinuxDeviceCgroup {
        Allow: allow,
        Type: t.into(),
        Major: major,
        Minor: minor,
        Access: access.into(),
        ..Default::default()
    }
}

/// Runs `prog` on one request the way the kernel would; returns r0.
fn run(prog: &[Insn], kind: DevKind, access: u8, major: u32, minor: u32) -> u64 {
    let ctx = [((access as u32) << 16) | kind as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..prog.len() + 1 {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        let imm64 = i.imm as i64 as u64;
        let jump = |cond: bool| if cond { i.off as usize } else { 0 };
        pc += 1;
        match i.code {
            LDX_MEM_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = ctx[i.off as usize / 4] as u64;
            }
            ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
            ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
            ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
            ALU64_MOV_K => r[dst] = imm64,
            JNE_K => pc += jump(r[dst] != imm64),
            JEQ_K => pc += jump(r[dst] == imm64),
            EXIT => return r[0],
            other => panic!("opcode {other:#x} not expected"),
        }
    }
    panic!("program did not exit (loop or fell off the end)");
}

/// The verifier refuses unreachable instructions and jumps out of range.
fn assert_all_reachable(prog: &[Insn]) {
    let mut seen = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(pc) = todo.pop() {
        assert!(pc < prog.len(), "jump past the end");
        if std::mem::replace(&mut seen[pc], true) {
            continue;
        }
        match prog[pc].code {
            EXIT => {}
            JNE_K | JEQ_K => todo.extend([pc + 1, pc + 1 + prog[pc].off as usize]),
            _ => todo.push(pc + 1),
        }
    }
    assert!(seen.iter().all(|&s| s), "unreachable instruction at {:?}", seen.iter().position(|&s| !s));
}

fn compile(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    let p = program(&parse(rules).unwrap());
    assert_all_reachable(&p);
    p
}

const RW: u8 = ACC_READ | ACC_WRITE;

#[test]
fn no_rules_allows_everything() {
    let p = compile(&[]);
    assert_eq!(run(&p, DevKind::Block, ACC_ALL, 8, 0), 1);
}

#[test]
fn deny_all_then_exceptions_is_the_usual_container_policy() {
    let p = compile(&[
        rule(false, "a", -1, -1, "rwm"),
        rule(true, "c", 1, 3, "rwm"),   // /dev/null
        rule(true, "c", 136, -1, "rw"), // every pts
        rule(true, "c", -1, -1, "m"),   // mknod of any char device
    ]);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 1, "null");
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 5), 0, "zero");
    assert_eq!(run(&p, DevKind::Block, ACC_READ, 1, 3), 0, "block 1:3 is not char 1:3");
    assert_eq!(run(&p, DevKind::Char, RW, 136, 7), 1, "pts wildcard minor");
    assert_eq!(run(&p, DevKind::Char, ACC_MKNOD, 136, 7), 1, "mknod of a char device");
    assert_eq!(run(&p, DevKind::Char, ACC_MKNOD | ACC_READ, 10, 200), 0, "m does not grant r");
    assert_eq!(run(&p, DevKind::Block, ACC_MKNOD, 8, 0), 0, "no block mknod");
}

#[test]
fn the_last_matching_rule_wins() {
    let p = compile(&[rule(true, "c", 1, 3, "rwm"), rule(false, "a", -1, -1, "rwm")]);
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 3), 0, "deny-all after the allow wins");
    assert_eq!(p.len(), 6 + 2, "rules before a catch-all are dead code, not emitted");
    let p = compile(&[rule(false, "a", -1, -1, ""), rule(true, "a", -1, -1, "")]);
    assert_eq!(run(&p, DevKind::Block, ACC_ALL, 8, 0), 1, "allow-all after deny-all");
}

#[test]
fn each_requested_bit_is_decided_by_the_last_rule_naming_it() {
    let p = compile(&[rule(false, "a", -1, -1, "rwm"), rule(true, "c", 1, 3, "r")]);
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 3), 1);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 0, "read-write needs w too");
    let p = compile(&[rule(true, "c", 1, 3, "rwm"), rule(false, "c", 1, 3, "w")]);
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 3), 1, "reads still allowed");
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 0, "any denied bit denies");
    // Partial grants add up, as v1's exception list does.
    let p = compile(&[rule(false, "a", -1, -1, "rwm"), rule(true, "c", 1, 3, "r"), rule(true, "c", 1, 3, "w")]);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 1, "r and w from two rules");
    assert_eq!(run(&p, DevKind::Char, RW | ACC_MKNOD, 1, 3), 0, "m was never granted");
    assert_eq!(run(&p, DevKind::Char, RW, 1, 5), 0, "other devices stay denied");
    // A later deny of one bit beats an earlier grant of it, not of the others.
    let p = compile(&[
        rule(false, "a", -1, -1, "rwm"),
        rule(true, "c", -1, -1, "rw"),
        rule(false, "c", 1, 3, "w"),
        rule(true, "c", 1, 3, "r"),
    ]);
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 3), 1);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 0);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 5), 1);
    // A bit no rule names falls back to the default (allow).
    let p = compile(&[rule(false, "c", 1, 3, "w")]);
    assert_eq!(run(&p, DevKind::Char, ACC_READ, 1, 3), 1);
    assert_eq!(run(&p, DevKind::Char, RW, 1, 3), 0);
}

/// Reference semantics, bit by bit, for the randomised comparison below.
fn reference(rules: &[DeviceRule], kind: DevKind, access: u8, major: u32, minor: u32) -> u64 {
    let allowed = [ACC_MKNOD, ACC_READ, ACC_WRITE].into_iter().filter(|bit| access & bit != 0).all(|bit| {
        rules
            .iter()
            .rev()
            .find(|r| {
                r.kind.is_none_or(|k| k == kind)
                    && r.major.is_none_or(|m| m == major)
                    && r.minor.is_none_or(|m| m == minor)
                    && r.access & bit != 0
            })
            .is_none_or(|r| r.allow)
    });
    allowed as u64
}

#[test]
fn the_program_agrees_with_the_bitwise_reference_on_random_rule_sets() {
    // A fixed-seed xorshift: reproducible, no extra dependency.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let kinds = ["a", "b", "c"];
    let accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"];
    for _ in 0..500 {
        let spec: Vec<_> = (0..1 + next(6))
            .map(|_| {
                let num = |n: u64| if n == 0 { -1 } else { n as i64 };
                let (major, minor) = (num(next(3)), num(next(3)));
                rule(next(2) == 0, kinds[next(3) as usize], major, minor, accesses[next(7) as usize])
            })
            .collect();
        let rules = parse(&spec).unwrap();
        let p = compile(&spec);
        for kind in [DevKind::Block, DevKind::Char] {
            for access in 1..=ACC_ALL {
                for (major, minor) in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)] {
                    assert_eq!(
                        run(&p, kind, access, major, minor),
                        reference(&rules, kind, access, major, minor),
                        "{spec:?} on {kind:?} {access} {major}:{minor}"
                    );
                }
            }
        }
    }
}

#[test]
fn type_a_ignores_numbers_and_empty_fields_mean_all() {
    let r = DeviceRule::from_spec(0, &rule(false, "", 4, 5, "")).unwrap();
    assert_eq!(r, DeviceRule { allow: false, kind: None, major: None, minor: None, access: ACC_ALL });
    assert_eq!(r.v1_line(), "a *:* rwm");
    let r = DeviceRule::from_spec(0, &rule(true, "b", 8, -1, "mr")).unwrap();
    assert_eq!(r.v1_line(), "b 8:* rm");
}

#[test]
fn hostile_rules_are_refused_with_the_rule_named() {
    for (bad, want) in [
        (rule(true, "x", 1, 3, "r"), "device rule 0: type \"x\""),
        (rule(true, "c", 1, 3, "rx"), "device rule 0: access \"rx\""),
        (rule(true, "c", 1 << 40, 3, "r"), "device rule 0: major 1099511627776 is out of range"),
        (rule(true, "c", 1, i64::MAX, "r"), "device rule 0: minor"),
    ] {
        let err = DeviceRule::from_spec(0, &bad).unwrap_err().to_string();
        assert!(err.starts_with(want), "{err}");
    }
}

#[test]
fn many_rules_compile_linearly_and_too_many_are_refused() {
    let n = MAX_RULES as i64;
    let rules: Vec<_> = (0..n).map(|i| rule(i % 2 == 0, "c", i, i, "rw")).collect();
    let p = compile(&rules);
    assert!(p.len() <= 6 + 10 * rules.len() + 2, "at most ten instructions a rule: {}", p.len());
    assert_eq!(run(&p, DevKind::Char, RW, n as u32 - 2, n as u32 - 2), 1);
    assert_eq!(run(&p, DevKind::Char, RW, n as u32 - 1, n as u32 - 1), 0);
    assert_eq!(run(&p, DevKind::Char, RW, 5000, 1), 1);
    let one_too_many: Vec<_> = (0..=n).map(|i| rule(true, "c", i, i, "rw")).collect();
    let err = parse(&one_too_many).unwrap_err().to_string();
    assert!(err.starts_with("513 device rules exceed the limit of 512"), "{err}");
}

/// A cgroup v2 directory of our own: the unified mount of a hybrid host, or
/// the v2 root, removed on drop (also when the test panics). `None` (with
/// the reason printed) when not root or no v2.
fn scratch_v2_cgroup(name: &str) -> Option<ScratchCgroup> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: loading a device program needs root");
        return None;
    }
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.threads").exists());
    let Some(root) = root else {
        eprintln!("skipping: no cgroup v2 hierarchy is mounted");
        return None;
    };
    let dir = root.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    Some(ScratchCgroup(dir))
}

struct ScratchCgroup(std::path::PathBuf);

impl std::ops::Deref for ScratchCgroup {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        // Its processes have exited, so the directory is empty.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `sh -c script` inside `cgroup` (it joins itself first) and returns
/// its stdout.
fn sh_in(cgroup: &Path, script: &str) -> String {
    let full = format!("echo $$ > {}/cgroup.procs && {script}", cgroup.display());
    let out = std::process::Command::new("/bin/sh").arg("-c").arg(full).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_kernel_enforces_the_compiled_program_on_a_real_cgroup() {
    let Some(dir) = scratch_v2_cgroup("cvm-devices-test") else { return };
    let check = "head -c1 /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null 2>&1 || echo zero-denied; \
                 mknod /tmp/cvm-dev-test-$$ c 1 5 2>/dev/null && echo mknod-ok; rm -f /tmp/cvm-dev-test-$$";
    let rules = parse(&[rule(false, "a", -1, -1, "rwm"), rule(true, "c", 1, 3, "rw")]).unwrap();
    let result = attach(&dir, &rules).map(|()| sh_in(&dir, check));
    // Attaching again replaces the program (UpdateContainer): now zero and mknod are allowed.
    let replaced = parse(&[rule(false, "a", -1, -1, "rwm"), rule(true, "c", 1, -1, "rwm")]).unwrap();
    let result2 = attach(&dir, &replaced).map(|()| sh_in(&dir, check));
    // Partial grants add up: r from one rule and w from another open read-write.
    let split =
        parse(&[rule(false, "a", -1, -1, "rwm"), rule(true, "c", 1, 3, "r"), rule(true, "c", 1, 3, "w")]).unwrap();
    let rw_check = "(exec 3<>/dev/null) && echo null-rw-ok; (exec 3<>/dev/zero) 2>/dev/null || echo zero-rw-denied";
    let result_split = attach(&dir, &split).map(|()| sh_in(&dir, rw_check));
    // The longest rule list we accept, in its costliest shape, passes the verifier.
    let long: Vec<_> = (0..MAX_RULES as i64).map(|i| rule(i % 2 == 0, "c", i, i, "rw")).collect();
    let result3 = attach(&dir, &parse(&long).unwrap());
    assert_eq!(result.unwrap(), "null-ok\nzero-denied\n");
    assert_eq!(result2.unwrap(), "null-ok\nmknod-ok\n");
    assert_eq!(result_split.unwrap(), "null-rw-ok\nzero-rw-denied\n");
    result3.unwrap();
}
