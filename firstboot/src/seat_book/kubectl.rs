//! Running `k3s kubectl` on a server (K3s's kubectl talks to the local apiserver as admin) and classifying its errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How to run `k3s kubectl` here.
#[derive(Clone, Debug)]
pub struct Kubectl {
    program: PathBuf,
    env: Vec<(String, String)>,
}

/// Why a kubectl call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// The object does not exist ("Error from server (NotFound)").
    #[error("not found: {0}")]
    NotFound(String),
    /// A create found the object there ("Error from server (AlreadyExists)").
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A replace carried a stale resourceVersion ("Error from server (Conflict)", HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else kubectl said (the apiserver is down, RBAC, a bad object).
    #[error("k3s kubectl failed: {0}")]
    Failed(String),
    /// kubectl could not be run at all.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program run.
        program: String,
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// kubectl printed something that is not the JSON asked for.
    #[error("k3s kubectl printed unexpected output: {0}")]
    Output(String),
}

impl Kubectl {
    /// `<root>/usr/local/bin/k3s kubectl`, where the image installs K3s.
    pub fn for_root(root: &Path) -> Kubectl {
        Kubectl::with_program(root.join("usr/local/bin/k3s"), Vec::new())
    }

    /// `PROGRAM kubectl` with extra environment (the test double reads its root and ports from it).
    pub fn with_program(program: PathBuf, env: Vec<(String, String)>) -> Kubectl {
        Kubectl { program, env }
    }

    /// Runs `kubectl ARGS` with `stdin` (for `-f -`); the parsed JSON it printed.
    pub fn json(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<serde_json::Value, KubectlError> {
        Run::json(self, args, stdin)
    }
}

/// Something that runs `kubectl ARGS` and returns what it printed on success: [`Kubectl`] in
/// the product, an in-memory apiserver in unit tests of the code that drives kubectl.
pub trait Run: Send + Sync + std::fmt::Debug {
    /// Runs `kubectl ARGS` with `stdin` (for `-f -`); its stdout, or the classified error.
    fn output(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, KubectlError>;

    /// [`Run::output`] parsed as the JSON asked for (`-o json`).
    fn json(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<serde_json::Value, KubectlError> {
        let out = self.output(args, stdin)?;
        serde_json::from_slice(&out)
            .map_err(|e| KubectlError::Output(format!("{e}: {}", String::from_utf8_lossy(&out))))
    }
}

impl Run for Kubectl {
    fn output(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, KubectlError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("kubectl")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| KubectlError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).map_err(spawn_error)?;
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        if !out.status.success() {
            return Err(classify(String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(out.stdout)
    }
}

/// kubectl's error line to its kind (the apiserver's status reason in parentheses).
fn classify(stderr: &str) -> KubectlError {
    let message = stderr.to_string();
    if stderr.contains("(NotFound)") {
        KubectlError::NotFound(message)
    } else if stderr.contains("(AlreadyExists)") {
        KubectlError::AlreadyExists(message)
    } else if stderr.contains("(Conflict)") {
        KubectlError::Conflict(message)
    } else {
        KubectlError::Failed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_errors_are_classified_by_the_apiserver_reason() {
        let conflict = "Error from server (Conflict): error when replacing \"-\": Operation cannot be fulfilled on configmaps \"firstboot-seats\": the object has been modified";
        assert!(matches!(classify(conflict), KubectlError::Conflict(_)));
        assert!(matches!(
            classify("Error from server (NotFound): configmaps \"firstboot-seats\" not found"),
            KubectlError::NotFound(_)
        ));
        assert!(matches!(
            classify("Error from server (AlreadyExists): error when creating \"-\": configmaps \"firstboot-seats\" already exists"),
            KubectlError::AlreadyExists(_)
        ));
        assert!(matches!(
            classify("The connection to the server 127.0.0.1:6443 was refused"),
            KubectlError::Failed(_)
        ));
    }

    #[test]
    fn a_missing_k3s_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Kubectl::for_root(dir.path())
            .json(&["get", "nodes", "-o", "json"], None)
            .unwrap_err();
        assert!(matches!(e, KubectlError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("usr/local/bin/k3s"), "{e}");
    }
}
