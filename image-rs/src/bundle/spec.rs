//! The OCI runtime `config.json` for an image, following image-spec's
//! "conversion to runtime config": Entrypoint+Cmd → args, Env, WorkingDir,
//! User (resolved against the image), Labels and the image metadata as
//! annotations, StopSignal and Volumes as annotations.

use std::collections::HashMap;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder};

use super::user::ResolvedUser;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image has neither Entrypoint nor Cmd: nothing to run")]
    NoCommand,
    #[error("building runtime spec: {0}")]
    Build(String),
}

/// Builds the runtime spec. `rootfs` is the path written into `root.path`.
pub fn runtime_spec(image: &ImageConfiguration, user: &ResolvedUser, rootfs: &str) -> Result<Spec, SpecError> {
    let cfg = image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    args.extend(cfg.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut env: Vec<String> = cfg.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let cwd = cfg.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".to_owned());

    let mut annotations: HashMap<String, String> = cfg.labels().clone().unwrap_or_default().into_iter().collect();
    annotations.insert("org.opencontainers.image.os".into(), image.os().to_string());
    annotations.insert("org.opencontainers.image.architecture".into(), image.architecture().to_string());
    if let Some(v) = image.variant() {
        annotations.insert("org.opencontainers.image.variant".into(), v.clone());
    }
    if let Some(a) = image.author() {
        annotations.insert("org.opencontainers.image.author".into(), a.clone());
    }
    if let Some(c) = image.created() {
        annotations.insert("org.opencontainers.image.created".into(), c.clone());
    }
    if let Some(s) = cfg.stop_signal() {
        annotations.insert("org.opencontainers.image.stopSignal".into(), s.clone());
    }
    if let Some(ports) = cfg.exposed_ports() {
        annotations.insert("org.opencontainers.image.exposedPorts".into(), ports.join(","));
    }
    if let Some(vols) = cfg.volumes() {
        // The runtime decides what backs a volume; the agent reads this list.
        annotations.insert("org.opencontainers.image.volumes".into(), vols.join(","));
    }

    let mut user_b = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        user_b = user_b.additional_gids(user.additional_gids.clone());
    }
    if let Some(name) = &user.username {
        user_b = user_b.username(name.clone());
    }
    let defaults = Spec::default();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user_b.build().map_err(|e| SpecError::Build(e.to_string()))?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(defaults.process().as_ref().and_then(|p| p.capabilities().clone()).unwrap_or_default())
        .rlimits(defaults.process().as_ref().and_then(|p| p.rlimits().clone()).unwrap_or_default())
        .no_new_privileges(true)
        .build()
        .map_err(|e| SpecError::Build(e.to_string()))?;
    let mut builder = SpecBuilder::default()
        .version(defaults.version().clone())
        .root(RootBuilder::default().path(rootfs).readonly(false).build().map_err(|e| SpecError::Build(e.to_string()))?)
        .process(process)
        .hostname("container")
        .annotations(annotations);
    if let Some(m) = defaults.mounts() {
        builder = builder.mounts(m.clone());
    }
    if let Some(l) = defaults.linux() {
        builder = builder.linux(l.clone());
    }
    builder.build().map_err(|e| SpecError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(config: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": config
        }))
        .unwrap()
    }

    #[test]
    fn entrypoint_cmd_env_cwd_and_annotations() {
        let img = image(serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["FOO=bar"], "WorkingDir": "/data",
            "Labels": {"team": "a"}, "StopSignal": "SIGINT", "Volumes": {"/var/lib/x": {}}
        }));
        let user = ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![10], username: Some("app".into()) };
        let spec = runtime_spec(&img, &user, "rootfs").unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo hi"]);
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"FOO=bar".to_owned()) && env.iter().any(|e| e.starts_with("PATH=")));
        assert_eq!(p.cwd().to_str(), Some("/data"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[10]);
        let a = spec.annotations().as_ref().unwrap();
        assert_eq!(a["team"], "a");
        assert_eq!(a["org.opencontainers.image.stopSignal"], "SIGINT");
        assert_eq!(a["org.opencontainers.image.volumes"], "/var/lib/x");
        assert_eq!(spec.root().as_ref().unwrap().path().to_str(), Some("rootfs"));
    }

    #[test]
    fn cmd_only_and_missing_command() {
        let img = image(serde_json::json!({"Cmd": ["/bin/true"], "Env": ["PATH=/x"]}));
        let spec = runtime_spec(&img, &ResolvedUser::default(), "rootfs").unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/true"]);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/x"]);
        assert_eq!(p.cwd().to_str(), Some("/"));
        assert!(matches!(
            runtime_spec(&image(serde_json::json!({})), &ResolvedUser::default(), "rootfs"),
            Err(SpecError::NoCommand)
        ));
    }
}
