use super::*;

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn agent_csr(cn: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn ca_is_created_once_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ca::load_or_create(dir.path()).unwrap();
    let b = Ca::load_or_create(dir.path()).unwrap();
    assert_eq!(a.cert_pem(), b.cert_pem());
    // The reloaded CA still signs certificates that name it as issuer.
    let id = b.issue_client(Role::Admin, "admin").unwrap();
    assert_eq!(
        role_of_cert_der(&pem_der(&id.cert_pem)).unwrap(),
        (Role::Admin, "admin".to_string())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "CA key readable by others: {mode:o}");
    }
}

#[test]
fn half_written_ca_is_an_error_not_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
    assert!(matches!(
        Ca::load_or_create(dir.path()),
        Err(CaError::Io { .. })
    ));
}

#[test]
fn agent_csr_gets_agent_role_and_our_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let cert = ca.sign_agent_csr("tor-1", &agent_csr("admin")).unwrap();
    assert_eq!(
        role_of_cert_der(&pem_der(&cert)).unwrap(),
        (Role::Agent, "tor-1".to_string())
    );
    assert!(matches!(
        ca.sign_agent_csr(
            "tor-1",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        ),
        Err(CaError::BadCsr(_))
    ));
    assert!(matches!(
        ca.sign_agent_csr("a/b", &agent_csr("x")),
        Err(CaError::BadName(_))
    ));
}

#[test]
fn role_uris_parse_strictly() {
    assert_eq!(
        role::parse_role_uri("tracemesh:role:agent/x-1"),
        Some((Role::Agent, "x-1".to_string()))
    );
    assert_eq!(role::parse_role_uri("tracemesh:role:root/x"), None);
    assert_eq!(role::parse_role_uri("tracemesh:role:admin/"), None);
    assert_eq!(role::parse_role_uri("https://x"), None);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let server = ca.issue_server(&[]).unwrap();
    assert_eq!(
        role_of_cert_der(&pem_der(&server.cert_pem)),
        Err(RoleError::NoRole)
    );
}

#[test]
fn identity_bundle_splits_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let id = ca.issue_client(Role::Admin, "admin").unwrap();
    let bundle = identity_bundle(&id, ca.cert_pem());
    let (c, root, k) = split_identity_bundle(&bundle).unwrap();
    assert_eq!(c.trim(), id.cert_pem.trim());
    assert_eq!(root.trim(), ca.cert_pem().trim());
    assert_eq!(k.trim(), id.key_pem.trim());
    assert!(split_identity_bundle(&id.cert_pem).is_none());
}
