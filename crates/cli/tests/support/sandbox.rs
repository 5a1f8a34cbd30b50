//! A network namespace and a cgroup v2 directory for a kernel test, removed on drop; and a
//! client inside both that reports what each `connect()` met.

use std::path::PathBuf;
use std::process::Command;

pub struct Sandbox {
    pub netns: String,
    pub cgroup: PathBuf,
}

impl Sandbox {
    /// A fresh namespace (loopback up) and cgroup, both named `<tag>-<pid>`.
    pub fn new(tag: &str) -> Sandbox {
        let netns = format!("{tag}-{}", std::process::id());
        for args in [
            vec!["netns", "add", &netns],
            vec!["-n", &netns, "link", "set", "lo", "up"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        let cgroup = meshlimit_kernel::cgroup2_root().unwrap().join(&netns);
        std::fs::create_dir(&cgroup).unwrap();
        Sandbox { netns, cgroup }
    }

    /// Connects `n` times to 127.0.0.1:`port` from a shell inside the cgroup and the
    /// namespace, where nothing listens: "C" for a connect the limiter let through (refused by
    /// the peer), "E" for one it stopped (EPERM).
    pub fn connect(&self, port: u16, n: usize) -> String {
        let script = format!(
            "echo $BASHPID > {procs}
             for i in $(seq {n}); do
               if err=$( {{ exec 3<>/dev/tcp/127.0.0.1/{port}; }} 2>&1 ); then echo X; continue; fi
               case $err in *'not permitted'*) echo E;; *'refused'*) echo C;; *) echo \"X $err\";; esac
             done",
            procs = self.cgroup.join("cgroup.procs").display()
        );
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["bash", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}
