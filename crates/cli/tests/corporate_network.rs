//! Corporate networks, as a user runs marathon behind one: `marathon serve`
//! reaching a TLS upstream through a real forward proxy (tinyproxy, with
//! Basic credentials, installed by scripts/test), trusting a private CA only
//! when told to, honouring NO_PROXY, and an account's own egress proxy.
//!
//! The upstream is a TLS terminator in this process (certificate for
//! `localhost` signed by a CA the test makes with the openssl CLI) in front
//! of marathon-sim. tinyproxy's log shows each CONNECT; the terminator counts
//! handshakes that succeeded and failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCOUNT_KEY: &str = "sk-corp-work-5d2a9e";
const PROXY_PASSWORD: &str = "pw-tiny-8c41f0";
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a `localhost` / 127.0.0.1 certificate it signed (P-256).
fn make_certificates(dir: &Path) {
    let ossl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=marathon test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

/// TLS in front of `target` (the simulator): counts good and failed handshakes.
struct TlsUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn tls_upstream(rt: &tokio::runtime::Runtime, dir: &Path, target: SocketAddr) -> TlsUpstream {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ok, bad) = (accepted.clone(), refused.clone());
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, ok, bad) = (acceptor.clone(), ok.clone(), bad.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    bad.fetch_add(1, SeqCst);
                    return;
                };
                ok.fetch_add(1, SeqCst);
                if let Ok(mut sim) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut sim).await;
                }
            });
        }
    });
    TlsUpstream {
        port,
        accepted,
        refused,
    }
}

/// tinyproxy in the foreground on a free port, asking for Basic credentials.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path) -> Tinyproxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
                 MaxClients 50\nAllow 127.0.0.1\nBasicAuth corp {PROXY_PASSWORD}\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (scripts/test installs it: apt-get install tinyproxy)");
        // Ready once it accepts a connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy { child, port, log }
    }

    /// CONNECT requests tinyproxy has logged for `host_port`.
    fn connects_to(&self, host_port: &str) -> usize {
        let needle = format!("CONNECT {host_port} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    fn url(&self) -> String {
        format!("http://corp:{PROXY_PASSWORD}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `marathon serve` with `env`, until dropped; its stderr is kept.
struct Serve {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(home: &Path, port: u16, env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marathon"));
        cmd.arg("serve")
            .env("MARATHON_HOME", home)
            .env("MARATHON_LOG", "debug")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.env_remove("MARATHON_EXTRA_CA_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            let ready = line.contains("dashboard");
            log.lock().unwrap().push_str(&(line + "\n"));
            if ready {
                break;
            }
        }
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Serve { child, port, log }
    }

    /// One chat request through marathon: the status code.
    fn call(&self) -> u16 {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\
             content-type: application/json\r\nanthropic-version: 2023-06-01\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer}"))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add_account(home: &Path) {
    let mut add = Command::new(env!("CARGO_BIN_EXE_marathon"))
        .args(["auth", "add", "anthropic", "--label", "work"])
        .env("MARATHON_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(ACCOUNT_KEY.as_bytes())
        .unwrap();
    assert!(add.wait().unwrap().success());
}

/// Guards: upstream traffic that ignores HTTPS_PROXY (a corporate network
/// with no direct route out would see every request fail), proxy
/// credentials that are not sent or that reach a log, a private CA that is
/// trusted without being configured (or not trusted once it is), NO_PROXY
/// not honoured, and an account's own egress proxy not used.
#[test]
fn upstream_traffic_goes_through_the_forward_proxy_and_trusts_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(marathon_sim::start(marathon_sim::Scenario::new([
            marathon_sim::Account::ok("work", ACCOUNT_KEY),
        ])))
        .unwrap();
    let sim_addr: SocketAddr = sim.url().trim_start_matches("http://").parse().unwrap();
    let tls = tls_upstream(&rt, &certs, sim_addr);
    let proxy = Tinyproxy::start(dir.path());
    let upstream_host = format!("localhost:{}", tls.port);

    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[providers.anthropic]\nupstream = \"https://{upstream_host}\"\n"
    );
    std::fs::write(home.join("config.toml"), &config).unwrap();
    add_account(&home);
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let proxy_url = proxy.url();

    // 1. Through the proxy (CONNECT, with its credentials), trusting the test CA.
    let serve = Serve::start(
        &home,
        port,
        &[("HTTPS_PROXY", &proxy_url), ("MARATHON_EXTRA_CA_FILE", ca)],
    );
    assert_eq!(serve.call(), 200, "{}", serve.log());
    assert_eq!(
        proxy.connects_to(&upstream_host),
        1,
        "one CONNECT, then kept alive"
    );
    assert_eq!(serve.call(), 200);
    assert_eq!(sim.count("work"), 2);
    assert_eq!(tls.accepted.load(SeqCst), 1);
    let log = serve.log();
    assert!(
        log.contains(&format!("CONNECT via 127.0.0.1:{}", proxy.port)),
        "{log}"
    );
    assert!(
        !log.contains(PROXY_PASSWORD),
        "the proxy password reached the log:\n{log}"
    );
    drop(serve);

    // 2. The same path without the CA: the upstream's certificate is refused.
    let serve = Serve::start(&home, port, &[("HTTPS_PROXY", &proxy_url)]);
    assert_ne!(serve.call(), 200);
    assert!(
        proxy.connects_to(&upstream_host) >= 2,
        "it went through the proxy"
    );
    // marathon may answer before the terminator has read the client's alert.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls.refused.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the TLS handshake was not refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.count("work"), 2, "no request reached the upstream");
    assert!(!serve.log().contains(PROXY_PASSWORD));
    drop(serve);

    // 3. NO_PROXY names the upstream: straight there, tinyproxy sees nothing.
    let connects = proxy.connects_to(&upstream_host);
    let serve = Serve::start(
        &home,
        port,
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "example.invalid, localhost"),
            ("MARATHON_EXTRA_CA_FILE", ca),
        ],
    );
    assert_eq!(serve.call(), 200, "{}", serve.log());
    assert_eq!(proxy.connects_to(&upstream_host), connects);
    assert_eq!(sim.count("work"), 3);
    drop(serve);

    // 4. No proxy in the environment, but the account has its own egress proxy.
    std::fs::write(
        home.join("config.toml"),
        format!("{config}account_proxies = {{ work = \"{proxy_url}\" }}\n"),
    )
    .unwrap();
    let serve = Serve::start(&home, port, &[("MARATHON_EXTRA_CA_FILE", ca)]);
    assert_eq!(serve.call(), 200, "{}", serve.log());
    assert_eq!(proxy.connects_to(&upstream_host), connects + 1);
    assert_eq!(sim.count("work"), 4);
    assert!(!serve.log().contains(PROXY_PASSWORD));
}

/// A token endpoint (plain HTTP, behind the test's TLS terminator): every
/// POST gets a fresh token pair whose access token is the simulator's key
/// for `work`. Counts the requests it answered.
fn token_endpoint(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    rt.spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as much body as it announced.
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                count.fetch_add(1, SeqCst);
                let body = format!(
                    r#"{{"access_token":"{ACCOUNT_KEY}","refresh_token":"rt-rotated-{}","token_type":"Bearer","expires_in":3600}}"#,
                    count.load(SeqCst)
                );
                let _ = tcp
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, served)
}

/// An OAuth account whose access token has expired (the simulator does not
/// know it): the first request needs a refresh.
fn add_expired_oauth_account(home: &Path) {
    use marathon_store::{Credential, NewAccount, Store as _};
    let store = marathon_store::FileStore::open(&home.join("data")).unwrap();
    store
        .add(NewAccount {
            provider: "anthropic".into(),
            label: Some("work".into()),
            kind: marathon_core::AccountKind::Oauth,
            priority: 0,
            identity: None,
            credential: Credential::Oauth {
                access: marathon_core::Secret::new("at-expired-2b7c"),
                refresh: Some(marathon_core::Secret::new("rt-first-91ad")),
                expires_at: Some(marathon_core::UnixMillis(1_000)),
                id_token: None,
                scopes: Vec::new(),
            },
            extras: Default::default(),
            source: None,
        })
        .unwrap();
}

/// Guards (issue 12, item 9): token refresh that ignores the egress
/// settings (it connected directly with the bundled roots, so behind a
/// corporate proxy or a TLS-inspecting gateway refresh failed while
/// requests worked). Here the token endpoint is `https://` with a
/// certificate from the test's private CA, reached through tinyproxy with
/// Basic credentials: the refresh goes through the proxy (tinyproxy logs the
/// CONNECT) and succeeds with the CA configured; without it the handshake is
/// refused and the token endpoint is never reached.
#[test]
fn token_refresh_goes_through_the_forward_proxy_and_trusts_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(marathon_sim::start(marathon_sim::Scenario::new([
            marathon_sim::Account::ok("work", ACCOUNT_KEY),
        ])))
        .unwrap();
    let (token_addr, token_requests) = token_endpoint(&rt);
    let tls = tls_upstream(&rt, &certs, token_addr);
    let proxy = Tinyproxy::start(dir.path());
    let token_host = format!("localhost:{}", tls.port);
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let proxy_url = proxy.url();
    // The upstream is plain http on loopback: only the refresh needs the proxy.
    let config = |port: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[providers.anthropic]\nupstream = \"{}\"\n\
             usage_poll = \"off\"\n\n[providers.anthropic.oauth]\ntoken_url = \"https://{token_host}/v1/oauth/token\"\n",
            sim.url()
        )
    };

    // 1. Through the proxy, trusting the test CA: refreshed, request served.
    let home = dir.path().join("home-ca");
    std::fs::create_dir(&home).unwrap();
    let port = free_port();
    std::fs::write(home.join("config.toml"), config(port)).unwrap();
    add_expired_oauth_account(&home);
    let serve = Serve::start(
        &home,
        port,
        &[("HTTPS_PROXY", &proxy_url), ("MARATHON_EXTRA_CA_FILE", ca)],
    );
    assert_eq!(serve.call(), 200, "{}", serve.log());
    assert_eq!(token_requests.load(SeqCst), 1, "one refresh");
    assert_eq!(
        proxy.connects_to(&token_host),
        1,
        "the refresh went through the proxy"
    );
    assert_eq!(tls.accepted.load(SeqCst), 1);
    assert_eq!(sim.count("work"), 1, "served with the refreshed token");
    let log = serve.log();
    assert!(!log.contains(PROXY_PASSWORD), "{log}");
    assert!(!log.contains("rt-rotated"), "{log}");
    drop(serve);

    // 2. The same, without the CA: the token endpoint's certificate is refused.
    let home = dir.path().join("home-no-ca");
    std::fs::create_dir(&home).unwrap();
    let port = free_port();
    std::fs::write(home.join("config.toml"), config(port)).unwrap();
    add_expired_oauth_account(&home);
    let serve = Serve::start(&home, port, &[("HTTPS_PROXY", &proxy_url)]);
    assert_ne!(serve.call(), 200);
    assert!(
        proxy.connects_to(&token_host) >= 2,
        "it went through the proxy"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls.refused.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the TLS handshake was not refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        token_requests.load(SeqCst),
        1,
        "the endpoint was never reached"
    );
    assert_eq!(sim.count("work"), 1);
    assert!(!serve.log().contains(PROXY_PASSWORD));
}
