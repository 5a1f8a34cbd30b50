//! Readiness for a service manager, as `sd_notify(3)` defines it. systemd starts a
//! `Type=notify` unit (`deploy/systemd/`) with `NOTIFY_SOCKET` naming a unix datagram socket —
//! a path, or `@name` in the abstract namespace — and counts the unit as started once the
//! process sends `READY=1` there; `STATUS=` is the line `systemctl status` shows.
//!
//! The long-running commands call [`ready`] once they do their job: the control plane when its
//! API listens, `dataplane` and `agent` when they enforce their first limits (and again with a
//! new status at each later version, which systemd shows and otherwise ignores). Without
//! `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells the service manager this command is ready, `status` being what it does now. A no-op
/// without `NOTIFY_SOCKET`; a failure to tell is a warning, never a reason to stop enforcing.
pub fn ready(status: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(error) = send(&socket, &ready_message(status)) {
        eprintln!(
            "warning: cannot tell the service manager we are ready ({NOTIFY_SOCKET}={}): {error}",
            socket.to_string_lossy()
        );
    }
}

/// `READY=1` and the status, on one line whatever `status` holds.
fn ready_message(status: &str) -> String {
    let status: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("READY=1\nSTATUS={}\n", status.trim())
}

/// Sends one datagram to the socket `NOTIFY_SOCKET` names.
fn send(socket: &OsStr, message: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let address = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or an @abstract name",
            ));
        }
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", message.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::*;

    /// Set in the child process of `a_child_started_with_notify_socket_reports_ready`.
    const CHILD: &str = "MESHLIMIT_NOTIFY_TEST_CHILD";

    fn listen(path: &std::path::Path) -> UnixDatagram {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn the_message_is_ready_and_a_one_line_status() {
        assert_eq!(
            ready_message("enforcing store version 3: 2 inbound(s)"),
            "READY=1\nSTATUS=enforcing store version 3: 2 inbound(s)\n"
        );
        assert_eq!(ready_message("two\nlines\n"), "READY=1\nSTATUS=two lines\n");
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = listen(&path);
        send(path.as_os_str(), &ready_message("up")).unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("meshlimit-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        send(OsStr::new(&format!("@{name}")), &ready_message("up")).unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn refuses_a_relative_socket_and_reports_a_missing_one() {
        let relative = send(OsStr::new("notify.sock"), "READY=1\n").unwrap_err();
        assert_eq!(relative.kind(), io::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens");
        assert!(send(missing.as_os_str(), "READY=1\n").is_err());
    }

    /// The real path: a process started with `NOTIFY_SOCKET` (this test binary again, running
    /// only `child_sends_ready`) calls [`ready`], and the datagram arrives.
    #[test]
    fn a_child_started_with_notify_socket_reports_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = listen(&path);
        let child = run_child(Some(path.as_os_str()));
        assert!(child.status.success(), "{child:?}");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving as a child\n");
    }

    /// A socket nobody listens on: the child warns and goes on; without the variable it says
    /// nothing at all.
    #[test]
    fn a_failed_notification_is_a_warning_and_no_socket_is_silence() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens");
        let child = run_child(Some(missing.as_os_str()));
        assert!(child.status.success(), "{child:?}");
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(
            stderr.contains("warning: cannot tell the service manager we are ready"),
            "{stderr}"
        );

        let child = run_child(None);
        assert!(child.status.success(), "{child:?}");
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(!stderr.contains("warning"), "{stderr}");
    }

    fn run_child(socket: Option<&OsStr>) -> std::process::Output {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "notify::tests::child_sends_ready", "--nocapture"])
            .env(CHILD, "1")
            .env_remove(NOTIFY_SOCKET);
        if let Some(socket) = socket {
            command.env(NOTIFY_SOCKET, socket);
        }
        command.output().unwrap()
    }

    /// Does something only in the child process the tests above start.
    #[test]
    fn child_sends_ready() {
        if std::env::var_os(CHILD).is_some() {
            ready("serving as a child");
        }
    }
}
