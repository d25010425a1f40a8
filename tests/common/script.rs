//! Runs a client script of `tests/python` or `tests/ruby` (real drivers and ORMs with their
//! defaults) the one way every suite does: the interpreter chosen by the file's extension, no
//! stdin, no `.pyc` files left in the tree, and on failure both outputs in the panic message.

use std::process::Stdio;

use tokio::process::Command;

/// What a script printed, for the suite's own checks.
pub struct ScriptOutput {
    pub stdout: String,
    pub stderr: String,
}

impl ScriptOutput {
    /// The lines of stdout (the step names the scripts print as each passes).
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `tests/<script>` (`python/x.py` or `ruby/x.rb`) with `args` and `env`; panics, with both
/// outputs, unless it exits 0.
pub async fn run_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> ScriptOutput {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let interpreter = if script.ends_with(".rb") {
        "ruby"
    } else {
        "python3"
    };
    let out = Command::new(interpreter)
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {interpreter} {path}: {e}"));
    let output = ScriptOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        output.stdout,
        output.stderr
    );
    output
}
