//! The command line as a user meets it: exit codes, certificate commands.

use std::process::Command;

fn edgegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgegate"))
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "surprise = 1\n[mqtt]\nplaintext_listen = \"0.0.0.0:1883\"\n[admin]\nlisten = \"0.0.0.0:9080\"\n[limits]\nmax_qos = 7\n",
    )
    .expect("write");
    let out = edgegate()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
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
