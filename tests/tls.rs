//! TLS: `serve --tls-cert --tls-key` serves HTTPS only and the worker port over TLS; the CLI
//! and `faasd worker --tls` trust `--cacert`; a certificate they do not trust is a clear error.
//! Certificates come from a CA each test generates with rcgen.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, Server, Worker, register, run, text, wait_workers};
use faasd::client::Client;

/// A CA, and a server certificate it signed for `localhost` and 127.0.0.1, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        Pki::with_names(&["localhost", "127.0.0.1"])
    }

    /// A CA and a server certificate it signed for `names` (`*.example.com` is a wildcard).
    fn with_names(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "faasd test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("certificate");
        let pki = Pki {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write CA");
        std::fs::write(&pki.cert, cert.pem()).expect("write certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }

    /// A server with this certificate.
    fn serve(&self, args: &[&str]) -> Server {
        let mut all = vec!["--tls-cert", path(&self.cert), "--tls-key", path(&self.key)];
        all.extend_from_slice(args);
        Server::start(&all)
    }

    /// A client of `server` that trusts this CA.
    fn client(&self, server: &Server) -> Client {
        Client::with_cacert(&server.url, Some(&self.ca)).expect("client")
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Runs the CLI with `env` set and no other faasd variables.
fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FAASD_URL")
        .env_remove("FAASD_CACERT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_registers_and_invokes_over_https_with_cacert() {
    let pki = Pki::new();
    let server = pki.serve(&[]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "printf 'hello %s' \"$(cat)\"").expect("write script");

    let out = cli(
        &[
            "register",
            "hello",
            path(&script),
            "--cacert",
            path(&pki.ca),
        ],
        &[("FAASD_URL", &server.url)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "registered hello version 1\n");
    // The CA by environment variable this time.
    let out = cli(
        &["invoke", "hello", "tls"],
        &[("FAASD_URL", &server.url), ("FAASD_CACERT", path(&pki.ca))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello tls");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_and_https_are_never_mixed_on_one_port() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    let addr = server.url.trim_start_matches("https://").to_string();

    // A plain HTTP request to the HTTPS port gets no HTTP answer.
    let plain = Client::new(&format!("http://{addr}")).expect("client");
    let err = plain.get("/healthz").await.expect_err("plain HTTP");
    assert!(
        err.to_string()
            .starts_with("cannot reach the faasd server at "),
        "{err}"
    );
    assert!(err.to_string().contains("use an https:// URL"), "{err}");
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{}", text(&answer));

    // The same port over TLS answers.
    let answer = pki.client(&server).get("/healthz").await.expect("https");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));

    // And an HTTPS client of a plain server fails too.
    let plain_server = Server::start(&["--local-workers", "0"]);
    let https_url = plain_server.url.replace("http://", "https://");
    let client = Client::with_cacert(&https_url, Some(&pki.ca)).expect("client");
    client
        .get("/healthz")
        .await
        .expect_err("TLS to a plain port");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_client_that_does_not_trust_the_certificate_says_so() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    // The system's roots, made deterministic: another CA's file.
    let other = Pki::new();
    let out = cli(
        &["ls"],
        &[
            ("FAASD_URL", &server.url),
            ("SSL_CERT_FILE", path(&other.ca)),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("is not signed by a CA this client trusts"),
        "{stderr}"
    );
    assert!(stderr.contains("--cacert"), "{stderr}");

    let out = cli(
        &["ls", "--cacert", "/no/such/ca.pem"],
        &[("FAASD_URL", &server.url)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot read certificate /no/such/ca.pem"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_tls_and_cacert_joins_and_runs_a_task() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    let client = pki.client(&server);
    let _worker = Worker::start_with(
        &server.worker_addr,
        "tls-worker",
        1,
        "push",
        &["--tls", "--cacert", path(&pki.ca)],
    );
    let workers = wait_workers(&client, 1).await;
    assert_eq!(workers[0]["name"], "tls-worker");
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let outcome = run(&client, "echo", b"over tls").await;
    assert_eq!(outcome.task["status"], "COMPLETED", "{}", outcome.task);
    assert_eq!(outcome.result, "over tls");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_does_not_trust_the_certificate_exits_1() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    let other = Pki::new();
    let cache = tempfile::tempdir().expect("tempdir");
    let out = cli(
        &[
            "worker",
            "--server",
            &server.worker_addr,
            "--tls",
            "--cacert",
            path(&other.ca),
            "--cache",
            path(cache.path()),
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has a certificate this worker does not accept"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is not signed by a CA this client trusts"),
        "{stderr}"
    );
}

/// What `openssl req -x509` makes by default: a self-signed certificate marked as a CA's,
/// which no client accepts as a server's own. `serve` warns at start, and the client says what
/// to do rather than webpki's error code.
#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_ca_certificate_is_named_as_such_by_serve_and_by_clients() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut params = rcgen::CertificateParams::new(names).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");

    let data = dir.path().join("data");
    let mut serve = Command::new(BIN)
        .args(["serve", "--data", path(&data), "--listen", "127.0.0.1:0"])
        .args(["--worker-listen", "127.0.0.1:0", "--local-workers", "0"])
        .args(["--tls-cert", path(&cert_path), "--tls-key", path(&key_path)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let stdout = serve.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map(|line| line.expect("read stdout"))
        .find_map(|line| line.strip_prefix("faasd listening on ").map(str::to_owned))
        .expect("serve's ready line");
    // Keep reading, so the server's later lines never meet a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    let out = cli(&["ls", "--url", &url, "--cacert", path(&cert_path)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("marked as a CA's"), "{stderr}");
    assert!(
        stderr.contains("basicConstraints=critical,CA:FALSE"),
        "{stderr}"
    );

    let _ = serve.kill();
    let logged = text(&serve.wait_with_output().expect("serve's output").stderr);
    assert!(
        logged.contains("clients will refuse this certificate"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_tls_against_a_tls_port_or_at_the_http_port_exits_1_and_says_why() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    let http_addr = server.url.trim_start_matches("https://").to_string();
    for addr in [&server.worker_addr, &http_addr] {
        let cache = tempfile::tempdir().expect("tempdir");
        let out = cli(
            &["worker", "--server", addr, "--cache", path(cache.path())],
            &[],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {stderr}");
        assert!(stderr.contains("is not a faasd worker frame"), "{stderr}");
        assert!(stderr.contains("--tls"), "{stderr}");
    }
}

#[test]
fn serve_refuses_a_missing_key_or_an_invalid_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let serve = |args: &[&str]| {
        let mut all = vec!["serve", "--data", path(&data), "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        cli(&all, &[])
    };
    let out = serve(&["--tls-cert", path(&pki.cert)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--tls-key"),
        "{}",
        text(&out.stderr)
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM").expect("write");
    let out = serve(&["--tls-cert", path(&garbage), "--tls-key", path(&pki.key)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot serve TLS: {} is not a valid certificate file",
            garbage.display()
        )),
        "{stderr}"
    );
}

/// An `exec` bundle serving its working directory, where it writes `file.txt`, on port 8080.
const FILE_SERVER: &str = "#!/bin/sh
echo 'hello over https' > file.txt
exec python3 -m http.server 8080 --bind 127.0.0.1
";

#[tokio::test]
async fn a_wildcard_certificate_gives_each_function_its_own_https_host() {
    let pki = Pki::with_names(&["localhost", "127.0.0.1", "*.example.com"]);
    let server = pki.serve(&["--local-workers", "1", "--domain", "example.com"]);
    let settings = serde_json::json!({"runtime": "exec", "http_port": 8080});
    let answer = register(&pki.client(&server), "web", FILE_SERVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // What a browser does for https://web.example.com/file.txt: TLS with that server name
    // (the certificate's wildcard must cover it), then a request with that Host.
    let (status, body) = https_get(&pki, &server, "web.example.com", "/file.txt").await;
    assert!(status.contains(" 200 "), "{status}: {body}");
    assert_eq!(body, "hello over https\n");
    let (status, body) = https_get(&pki, &server, "nosuch.example.com", "/").await;
    assert!(status.contains(" 404 "), "{status}: {body}");
}

/// `GET path` over TLS to the server's address with `host` as the server name and `Host`;
/// the status line and the body.
async fn https_get(pki: &Pki, server: &Server, host: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = faasd::tls::client_config(Some(&pki.ca)).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let addr = server.url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake as {host}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    // A server may end TLS without a close_notify; what arrived before that is the answer.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = text(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `faasd bench`'s callers each use a connection of their own (`Client::connection`): it
/// speaks HTTPS with the client's CA, sends the client's token with every request, and serves
/// one request after another.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_of_its_own_speaks_https_and_sends_the_token() {
    let pki = Pki::new();
    let server = pki.serve(&[]);
    let local = pki.client(&server);
    let registered = register(&local, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(registered.status, 201, "{}", text(&registered.body));
    let body = bytes::Bytes::from(r#"{"name": "ann", "role": "admin"}"#);
    let added = local
        .post("/v1/users", "application/json", body)
        .await
        .expect("add a user");
    assert_eq!(added.status, 201, "{}", text(&added.body));
    let token: serde_json::Value = added.json().expect("json");
    let token = token["token"].as_str().expect("token");

    let ann = pki.client(&server).with_token(token).expect("token");
    let mut connection = ann.connection().await.expect("connect");
    for payload in ["one", "two"] {
        let answer = connection
            .post("/v1/functions/echo/invoke", "text/plain", payload.into())
            .await
            .expect("invoke");
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
        assert_eq!(text(&answer.body), payload);
    }
    // Without a token, now that a user exists, the same route is refused.
    let mut anonymous = local.connection().await.expect("connect");
    let refused = anonymous
        .post("/v1/functions/echo/invoke", "text/plain", "three".into())
        .await
        .expect("answer");
    assert_eq!(refused.status, 401, "{}", text(&refused.body));
}

/// A connection to a server whose certificate the client does not trust fails with the
/// same advice as the pooled client's requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_to_an_untrusted_server_says_so() {
    let pki = Pki::new();
    let server = pki.serve(&["--local-workers", "0"]);
    let stranger = Client::new(&server.url).expect("client");
    let err = match stranger.connection().await {
        Ok(_) => panic!("a certificate nobody vouched for was trusted"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("--cacert"), "{err}");
}
