//! sd_notify: READY=1 and STATUS= lines to systemd over `$NOTIFY_SOCKET`; its own failures are logged, never fatal.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go: the socket systemd named in `$NOTIFY_SOCKET`, or nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    target: Option<String>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); unset means "not under systemd".
    pub fn from_env() -> Self {
        Self::to_socket(std::env::var("NOTIFY_SOCKET").ok())
    }

    /// A notifier for an explicit socket (`None`: notifications are dropped).
    pub fn to_socket(target: Option<String>) -> Self {
        Notifier {
            target: target.filter(|t| !t.is_empty()),
        }
    }

    /// Tells systemd the service is up (`READY=1`), with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// Sets the one-line status shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// Sends raw `KEY=VALUE` lines; a failure is logged as a warning and otherwise ignored,
    /// because losing a status line must never stop the node from forming its cluster.
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.try_notify(message) {
            tracing::warn!(error = %e, "sd_notify failed; continuing");
        }
    }

    /// Sends raw lines and reports errors (for tests and callers that care).
    pub fn try_notify(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let addr = socket_addr(target)?;
        let sock = UnixDatagram::unbound()?;
        let sent = sock.send_to_addr(message.as_bytes(), &addr)?;
        if sent != message.len() {
            return Err(io::Error::other("short datagram write"));
        }
        Ok(())
    }
}

fn socket_addr(target: &str) -> io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None if target.starts_with('/') => SocketAddr::from_pathname(target),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {target:?} is neither a path nor @abstract"),
        )),
    }
}

/// STATUS= is one line: newlines would start a new (bogus) assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(Some(path.to_string_lossy().into_owned()));
        n.status("waiting for 1 more node:\n2/3 visible");
        assert_eq!(recv(&server), "STATUS=waiting for 1 more node: 2/3 visible");
        n.ready("ready: server");
        assert_eq!(recv(&server), "READY=1\nSTATUS=ready: server");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("firstboot-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to_socket(Some(format!("@{name}"))).ready("up");
        assert_eq!(recv(&server), "READY=1\nSTATUS=up");
    }

    #[test]
    fn failures_are_reported_but_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::to_socket(Some(
            dir.path().join("absent").to_string_lossy().into_owned(),
        ));
        assert!(n.try_notify("READY=1").is_err());
        n.ready("still fine"); // logs, does not panic or return an error
        assert!(Notifier::to_socket(Some("relative".into()))
            .try_notify("X=1")
            .is_err());
        assert!(Notifier::to_socket(None).try_notify("READY=1").is_ok());
    }
}
