//! The TCP listener with mutual TLS: a client with a certificate from the configured CA
//! gets in (with the hybrid post-quantum key exchange), a client without a certificate or
//! with one from another CA does not. Certificates are made here with rcgen.

mod common;

use std::sync::Arc;

use common::{expect, stderr, Appliance};
use control::client::{Client, Target};
use control::pb;
use control::server::TcpOptions;
use control::tls::Pem;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Identity {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn pem(&self) -> Pem {
        Pem::from_bytes("ca.pem", self.issuer.pem())
    }
}

fn pems(i: &Identity) -> (Pem, Pem) {
    (
        Pem::from_bytes("cert.pem", i.cert.clone()),
        Pem::from_bytes("key.pem", i.key.clone()),
    )
}

struct Setup {
    ca: Ca,
    app: Appliance,
    endpoint: String,
}

fn setup() -> Setup {
    let ca = Ca::new("slipstream test CA");
    let server = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert, key) = pems(&server);
    let tcp = TcpOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
        ca: ca.pem(),
    };
    let app = Appliance::start(1_000, |o| {
        o.socket = None;
        o.tcp = Some(tcp);
    });
    let endpoint = app
        .listeners
        .iter()
        .find(|l| l.starts_with("https://"))
        .unwrap()
        .clone();
    assert!(!app.listeners.iter().any(|l| l.starts_with("unix:")));
    Setup { ca, app, endpoint }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects and calls GetStatus; the error text when anything fails.
async fn status(
    endpoint: &str,
    ca: Pem,
    identity: Option<(Pem, Pem)>,
) -> Result<pb::Status, String> {
    let t = Target::Tls {
        endpoint: endpoint.to_string(),
        ca,
        identity,
    };
    let mut c = Client::connect(&t).await.map_err(|e| e.to_string())?;
    c.system
        .get_status(pb::GetStatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[test]
fn a_client_certificate_from_the_ca_is_accepted_with_the_hybrid_key_exchange() {
    let s = setup();
    let good = s.ca.issue(&["operator"]);
    let st = rt()
        .block_on(status(&s.endpoint, s.ca.pem(), Some(pems(&good))))
        .unwrap();
    assert_eq!(st.listeners, vec![s.endpoint.clone()]);

    // The key exchange the handshake settles on.
    let (cert, key) = pems(&good);
    let cfg = Arc::new(control::tls::client_config(&s.ca.pem(), Some((&cert, &key))).unwrap());
    let addr = s.endpoint.trim_start_matches("https://").to_string();
    let group = rt().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        let c = tls.get_ref().1;
        (
            c.negotiated_key_exchange_group().map(|g| g.name()),
            c.protocol_version(),
            c.alpn_protocol().map(|a| a.to_vec()),
        )
    });
    assert_eq!(group.0, Some(rustls::NamedGroup::X25519MLKEM768));
    assert_eq!(group.1, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(group.2.as_deref(), Some(&b"h2"[..]));

    // ctl over TLS.
    let dir = s.app.dir.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ca = write("ca.pem", &s.ca.issuer.pem());
    let cert = write("me.pem", &good.cert);
    let key = write("me.key", &good.key);
    let out = common::ctl(&[
        "--endpoint",
        &s.endpoint,
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "workers",
    ]);
    let text = expect(&out, 0);
    assert!(text.contains("w0") && text.contains("p0:q1"), "{text}");
    let other = Ca::new("someone else");
    let bad = other.issue(&["intruder"]);
    let bcert = write("bad.pem", &bad.cert);
    let bkey = write("bad.key", &bad.key);
    let out = common::ctl(&[
        "--endpoint",
        &s.endpoint,
        "--cert",
        &bcert,
        "--key",
        &bkey,
        "--ca",
        &ca,
        "status",
    ]);
    expect(&out, 1);
    eprintln!("ctl with another CA's certificate: {}", stderr(&out));
    assert!(!stderr(&out).is_empty());
    let out = s.app.stop();
    assert!(out.accounting_ok);
}

#[test]
fn no_client_certificate_or_one_from_another_ca_is_refused() {
    let s = setup();
    let rt = rt();
    let none = rt.block_on(status(&s.endpoint, s.ca.pem(), None));
    assert!(none.is_err(), "no client certificate: {none:?}");
    eprintln!("without a certificate: {}", none.unwrap_err());
    let other = Ca::new("another CA");
    let foreign = other.issue(&["intruder"]);
    let res = rt.block_on(status(&s.endpoint, s.ca.pem(), Some(pems(&foreign))));
    assert!(res.is_err(), "certificate from another CA: {res:?}");
    eprintln!("with another CA's certificate: {}", res.unwrap_err());
    // A server certificate the client does not trust is refused by the client too.
    let good = s.ca.issue(&["operator"]);
    let res = rt.block_on(status(&s.endpoint, other.pem(), Some(pems(&good))));
    assert!(res.is_err(), "untrusted server: {res:?}");
    // And the server still serves good clients afterwards.
    rt.block_on(status(&s.endpoint, s.ca.pem(), Some(pems(&good))))
        .unwrap();
}
