//! A pids cgroup of our own, to give a hub fewer threads than the machine
//! has. Needs root and the pids controller (cgroup v1, or v2 with pids
//! enabled at the root); under `CI=true` a missing piece fails the test,
//! elsewhere the test is skipped with a message.

use std::ffi::CString;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::poll;

pub struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    /// A new cgroup holding at most `max` tasks. None (skip) when it cannot
    /// be made outside CI.
    pub fn create(max: usize) -> Option<PidsCgroup> {
        let name = format!(
            "ssehub-test-{}-{}",
            std::process::id(),
            crate::harness::unique()
        );
        let made = || -> Result<PidsCgroup, String> {
            let v1 = PathBuf::from("/sys/fs/cgroup/pids");
            let root = if v1.join("pids.max").exists() || v1.join("cgroup.procs").exists() {
                v1
            } else {
                let v2 = PathBuf::from("/sys/fs/cgroup");
                let controllers = fs::read_to_string(v2.join("cgroup.controllers"))
                    .map_err(|e| format!("no pids cgroup controller (v1 or v2): {e}"))?;
                if !controllers.split_whitespace().any(|c| c == "pids") {
                    return Err("cgroup v2 without the pids controller".into());
                }
                // Children get the controller only where the root passes
                // it on; enabling it there changes no limit.
                let enabled =
                    fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
                if !enabled.split_whitespace().any(|c| c == "pids") {
                    fs::write(v2.join("cgroup.subtree_control"), "+pids")
                        .map_err(|e| format!("enable pids in cgroup v2: {e}"))?;
                }
                v2
            };
            let dir = root.join(&name);
            fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            let cgroup = PidsCgroup { dir };
            cgroup.set_max(max)?;
            Ok(cgroup)
        };
        match made() {
            Ok(c) => Some(c),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true and no pids cgroup can be made: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no pids cgroup ({e})");
                None
            }
        }
    }

    pub fn set_max(&self, max: usize) -> Result<(), String> {
        fs::write(self.dir.join("pids.max"), max.to_string()).map_err(|e| format!("pids.max: {e}"))
    }

    /// Tasks in the cgroup now.
    pub fn current(&self) -> usize {
        let text = fs::read_to_string(self.dir.join("pids.current")).unwrap();
        text.trim().parse().unwrap()
    }

    /// For `Start::cgroup_procs`.
    pub fn procs(&self) -> CString {
        CString::new(self.dir.join("cgroup.procs").to_str().unwrap()).unwrap()
    }
}

impl Drop for PidsCgroup {
    /// The hub must be gone first (declare the cgroup before the hub).
    fn drop(&mut self) {
        let dir = self.dir.clone();
        if !poll(Duration::from_secs(5), || fs::remove_dir(&dir).is_ok()) {
            eprintln!("warning: cgroup {} left behind", dir.display());
        }
    }
}
