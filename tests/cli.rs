//! The command line as a user meets it: exit codes, certificate commands.

use std::process::Command;

fn edgegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgegate"))
}

/// `edgegate serve` on a configuration file with `text`, in a fresh directory.
fn serve_with(text: &str) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).expect("write");
    let out = edgegate()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    (dir, out)
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_64() {
    let (dir, out) = serve_with(
        "surprise = 1\n[mqtt]\nplaintext_listen = \"0.0.0.0:1883\"\n[admin]\nlisten = \"0.0.0.0:9080\"\n[limits]\nmax_qos = 7\n",
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["surprise", "plaintext_listen", "admin.listen", "max_qos"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing was started or created"
    );
}

#[test]
fn a_broken_rule_names_the_file_rule_and_position_and_exits_64() {
    let (dir, out) = serve_with("[[rules]]\nname = \"hot\"\nsql = \"SELECT * FROM 'a' WHERE\"\n");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["config.toml", "rules[0] `hot`", "position 23"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

#[test]
fn cert_commands_make_a_ca_and_device_certificates_it_signs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8 path");
    let run = |args: &[&str]| {
        let o = edgegate().args(args).output().expect("run");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["cert", "ca", "--out", out]);
    // A second CA would orphan every certificate issued so far.
    let again = edgegate()
        .args(["cert", "ca", "--out", out])
        .output()
        .expect("run");
    assert!(!again.status.success());
    run(&[
        "cert", "issue", "--cn", "sensor-9", "--out", out, "--ca-dir", out,
    ]);
    run(&[
        "cert", "issue", "--cn", "legacy-1", "--rsa", "--out", out, "--ca-dir", out,
    ]);
    edgegate::transport::pki::Ca::load(dir.path()).expect("the CA loads");
    for (name, algorithm) in [
        ("sensor-9", "1.2.840.10045.2.1"),
        ("legacy-1", "1.2.840.113549.1.1.1"),
    ] {
        let pem = std::fs::read(dir.path().join(format!("{name}.pem"))).expect("cert");
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("a certificate")
            .expect("pem");
        let id = edgegate::registry::ClientIdentity::from_der(&der).expect("parses");
        assert_eq!(id.subject.common_name.as_deref(), Some(name));
        assert_eq!(id.issuer.common_name.as_deref(), Some("edgegate local CA"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            algorithm
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join(format!("{name}.key"));
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
        }
    }
    // Names that would escape the output directory are refused.
    let bad = edgegate()
        .args([
            "cert", "issue", "--cn", "../x", "--out", out, "--ca-dir", out,
        ])
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

#[test]
fn policy_check_reports_file_statement_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("ok.json"),
        r#"{"Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("typo.json"),
        r#"{"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
                          {"Effect": "Alow", "Action": "iot:Publish", "Resource": "*"}]}"#,
    )
    .expect("write");
    let out = edgegate()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("typo.json: statement 1: Effect must be"),
        "{text}"
    );
    std::fs::remove_file(dir.path().join("typo.json")).expect("rm");
    let out = edgegate()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The repository's own policies are valid.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let out = edgegate()
        .args(["policy", "check"])
        .arg(&shipped)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn policy_test_explains_the_decision_like_test_authorization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().expect("utf8");
    for args in [
        vec!["cert", "ca", "--out", certs_s],
        vec![
            "cert", "issue", "--cn", "lamp-7", "--out", certs_s, "--ca-dir", certs_s,
        ],
    ] {
        assert!(
            edgegate()
                .args(&args)
                .output()
                .expect("run")
                .status
                .success()
        );
    }
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(
        policies.join("by-cn.json"),
        r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "OwnTopics", "Effect": "Allow", "Action": "iot:Publish",
             "Resource": "arn:aws:iot:us-east-1:000000000000:topic/lamps/${iot:Certificate.Subject.CommonName}/*"},
            {"Sid": "NoAdmin", "Effect": "Deny", "Action": "iot:*",
             "Resource": "arn:aws:iot:us-east-1:000000000000:topic/lamps/*/admin"}]}"#,
    )
    .expect("write");
    let test = |resource: &str| {
        let out = edgegate()
            .args(["policy", "test", "--dir"])
            .arg(&policies)
            .arg("--cert")
            .arg(certs.join("lamp-7.pem"))
            .args([
                "--client-id",
                "lamp-7",
                "--action",
                "iot:Publish",
                "--resource",
                resource,
            ])
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // 0 on ALLOWED, 1 on a deny.
        let want = if stdout.starts_with("ALLOWED") { 0 } else { 1 };
        assert_eq!(
            out.status.code(),
            Some(want),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let allowed = test("topic/lamps/lamp-7/state");
    assert!(allowed.starts_with("ALLOWED"), "{allowed}");
    assert!(
        allowed.contains("`by-cn`, statement 0 (OwnTopics)"),
        "{allowed}"
    );
    let denied = test("arn:aws:iot:us-east-1:000000000000:topic/lamps/lamp-7/admin");
    assert!(denied.starts_with("EXPLICIT_DENY"), "{denied}");
    assert!(denied.contains("statement 1 (NoAdmin)"), "{denied}");
    let other = test("topic/lamps/lamp-8/state");
    assert!(other.starts_with("IMPLICIT_DENY"), "{other}");
}

/// Starts `edgegate serve` in `dir` with `text` as its configuration, reads
/// what it prints until the quick-start banner, stops it, and gives the
/// banner line and everything it logged.
fn banner_and_log(dir: &std::path::Path, text: &str) -> (String, String) {
    use std::io::{BufRead, BufReader, Read};
    let config = dir.join("config.toml");
    std::fs::write(&config, text).expect("write");
    let mut child = edgegate()
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "edgegate=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let stdout = child.stdout.take().expect("stdout");
    let banner = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(20)
        .find(|l| l.contains("Try it with"))
        .unwrap_or_default();
    child.kill().expect("stop");
    child.wait().expect("reaped");
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read");
    (banner, log)
}

#[test]
fn start_up_says_what_is_true() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listeners = "data_dir = \"data\"\n[mqtt]\nlisten = [\"127.0.0.1:0\"]\n[https]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (first, log) = banner_and_log(dir.path(), listeners);
    assert!(first.contains("this first run made"), "{first}");
    assert!(
        !log.contains("open files"),
        "the default connection bound is a ceiling, not a request:\n{log}"
    );
    let (second, _) = banner_and_log(dir.path(), listeners);
    assert!(
        second.contains("Try it with the certificates in") && !second.contains("first run"),
        "{second}"
    );
    let (_, log) = banner_and_log(
        dir.path(),
        &format!("{listeners}[limits]\nmax_connections = 100000000\n"),
    );
    assert!(
        log.contains("ulimit -n") && log.contains("LimitNOFILE") && log.contains("--ulimit"),
        "a bound above the hard limit names the fix:\n{log}"
    );
}
