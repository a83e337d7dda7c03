//! Open-loop load generator for the injector benchmark (`bench/injector.sh`): AdmissionReviews
//! POSTed over TLS at a fixed rate, as the API server sends them.
//!
//! ```text
//! review_load --target https://127.0.0.1:8443/mutate --rate 1000 --duration 20s --connections 4 [--ca CERT] [--h2]
//! review_load --write-cert DIR     # DIR/cert.pem and DIR/key.pem, self-signed for 127.0.0.1 and localhost
//! ```
//!
//! Request `k` is due at `start + k / rate`; a thread of its own keeps that schedule, whatever the
//! answers do. With HTTP/1.1 (the default) each due request goes to the first of `--connections`
//! keep-alive connections that is free; with `--h2` all go as concurrent streams of one connection.
//! Each request's latency runs from the time it was due to its answer's last byte, so a stall
//! counts for every request it held up (no coordinated omission), not just for the one it hit.
//!
//! The reviews are `injector/tests/fixtures/*.request.json` (each a whole AdmissionReview captured
//! from the test bed's API server), sent in turn. Before the clock starts, each is sent once and its answer checked.
//!
//! An error is a request with no answer (connection failed, or none within `--timeout`), an
//! answer other than 200, or a 200 that is not an AdmissionReview allowing this request's uid.
//! The latency percentiles are over every answered request, whatever its status. Two more lines
//! tell the generator's part from the server's: the start delay (due time to the request handed
//! to a connection: the pacing thread's wake-up, the hand-over, and on HTTP/1.1 waiting for a
//! free connection) and the latency from that moment on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "Open-loop AdmissionReview load over TLS for inflight-injector")]
struct Args {
    /// The webhook's URL.
    #[arg(long, default_value = "https://127.0.0.1:8443/mutate")]
    target: Uri,
    /// Reviews per second, on a fixed schedule.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long requests are sent for.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// HTTP/1.1 keep-alive connections (ignored with --h2).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// One HTTP/2 connection (ALPN h2), every request a stream of it, as the API server does.
    #[arg(long)]
    h2: bool,
    /// PEM certificate(s) the server's certificate must chain to; without it, it is not checked.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Where captured AdmissionReviews (`*.request.json`) are looked for.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))]
    fixtures: PathBuf,
    /// A request with no answer within this is an error (the API server's default webhook timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write DIR/cert.pem and DIR/key.pem (self-signed, for 127.0.0.1 and localhost) and exit.
    #[arg(long, value_name = "DIR")]
    write_cert: Option<PathBuf>,
}

/// One AdmissionReview to send.
#[derive(Debug)]
struct Review {
    name: String,
    uid: String,
    body: Bytes,
}

/// Where requests go.
#[derive(Debug)]
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// `host:port`, the HTTP/1.1 Host header.
    authority: HeaderValue,
    tls: Arc<rustls::ClientConfig>,
    h2: bool,
}

/// A request due at `due`.
#[derive(Debug, Clone, Copy)]
struct Job {
    index: u64,
    due: Instant,
}

#[derive(Debug, Default)]
struct Stats {
    /// Due time to the answer's last byte, of every answered request.
    latencies: Vec<Duration>,
    /// Due time to the moment the request was handed to a connection.
    start_delays: Vec<Duration>,
    /// That moment to the answer's last byte, of every answered request.
    from_send: Vec<Duration>,
    answered: u64,
    patched: u64,
    transport_errors: u64,
    timeouts: u64,
    status_errors: u64,
    bad_answers: u64,
    last_answer: Option<Instant>,
}

/// What one answer was.
#[derive(Debug)]
enum Answer {
    Patched,
    Unchanged,
    Status(StatusCode),
    Bad(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_cert {
        return write_cert(dir);
    }
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let connections = if args.h2 { 1 } else { args.connections.max(1) };
    let target = Arc::new(target(&args)?);
    let (reviews, source) = reviews(&args.fixtures)?;
    let reviews = Arc::new(reviews);
    let total = u64::try_from(args.duration.as_nanos() * u128::from(args.rate) / 1_000_000_000)?;
    println!(
        "review_load: {total} reviews at {}/s for {:?} over {} to {}; pods: {} ({source})",
        args.rate,
        args.duration,
        if args.h2 {
            "HTTP/2 (1 connection)".to_owned()
        } else {
            format!("HTTP/1.1 ({connections} keep-alive connections)")
        },
        target.uri,
        reviews
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );

    // Connections first, and every review once, before the clock starts.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(Sender::connect(&target).await?);
    }
    if let Some(first) = senders.first_mut() {
        for review in reviews.iter() {
            let (status, body) =
                tokio::time::timeout(args.timeout, first.exchange(&target, review))
                    .await
                    .map_err(|_| anyhow!("{}: no answer within {:?}", review.name, args.timeout))?
                    .with_context(|| format!("{}: the request failed", review.name))?;
            match judge(status, &body, &review.uid) {
                Answer::Patched => println!("  {}: answered with a patch", review.name),
                Answer::Unchanged => println!("  {}: admitted unchanged", review.name),
                Answer::Status(status) => bail!("{}: answered {status}", review.name),
                Answer::Bad(why) => bail!("{}: {why}", review.name),
            }
        }
    }

    let stats = Arc::new(Mutex::new(Stats {
        latencies: Vec::with_capacity(usize::try_from(total)?),
        start_delays: Vec::with_capacity(usize::try_from(total)?),
        from_send: Vec::with_capacity(usize::try_from(total)?),
        ..Stats::default()
    }));
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let start = Instant::now() + Duration::from_millis(20);
    let rate = u64::from(args.rate);
    // The schedule, on a thread of its own: a tokio timer wakes on whole milliseconds at best.
    let pacer = std::thread::spawn(move || {
        for index in 0..total {
            let due = start + Duration::from_nanos(index * 1_000_000_000 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(Job { index, due }).is_err() {
                break;
            }
        }
    });

    let mut workers = tokio::task::JoinSet::new();
    if args.h2 {
        // Every due request at once on a stream of its own.
        let Some(Sender::H2(sender)) = senders.pop() else {
            bail!("no h2 connection");
        };
        let (target, reviews, stats, timeout) =
            (target.clone(), reviews.clone(), stats.clone(), args.timeout);
        workers.spawn(async move {
            let mut rx = rx;
            let mut streams = tokio::task::JoinSet::new();
            while let Some(job) = rx.recv().await {
                let mut sender = Sender::H2(sender.clone());
                let (target, reviews, stats) = (target.clone(), reviews.clone(), stats.clone());
                streams.spawn(async move {
                    run(&mut sender, &target, &reviews, &stats, job, timeout).await;
                });
                while streams.try_join_next().is_some() {}
            }
            while streams.join_next().await.is_some() {}
        });
    } else {
        // Each due request to the first free connection.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for mut sender in senders {
            let (rx, target, reviews, stats, timeout) = (
                rx.clone(),
                target.clone(),
                reviews.clone(),
                stats.clone(),
                args.timeout,
            );
            workers.spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some(job) = job else { break };
                    if sender.is_closed() {
                        match Sender::connect(&target).await {
                            Ok(new) => sender = new,
                            Err(_) => {
                                lock(&stats).transport_errors += 1;
                                continue;
                            }
                        }
                    }
                    run(&mut sender, &target, &reviews, &stats, job, timeout).await;
                }
            });
        }
    }
    while workers.join_next().await.is_some() {}
    pacer
        .join()
        .map_err(|_| anyhow!("the pacing thread panicked"))?;

    let mut stats = lock(&stats);
    report(&mut stats, total, start);
    Ok(())
}

/// Sends `job`'s review and counts what came of it.
async fn run(
    sender: &mut Sender,
    target: &Target,
    reviews: &[Review],
    stats: &Mutex<Stats>,
    job: Job,
    timeout: Duration,
) {
    let started = Instant::now();
    let Some(review) = usize::try_from(job.index % reviews.len() as u64)
        .ok()
        .and_then(|i| reviews.get(i))
    else {
        return;
    };
    let answer = tokio::time::timeout(timeout, sender.exchange(target, review)).await;
    // The answer is in: what is done with it next is the load generator's time, not the server's.
    let now = Instant::now();
    let answer = answer.map(|a| a.map(|(status, body)| judge(status, &body, &review.uid)));
    let mut stats = lock(stats);
    stats
        .start_delays
        .push(started.saturating_duration_since(job.due));
    let answer = match answer {
        Err(_) => {
            stats.timeouts += 1;
            return;
        }
        Ok(Err(_)) => {
            stats.transport_errors += 1;
            return;
        }
        Ok(Ok(answer)) => answer,
    };
    stats.answered += 1;
    stats.latencies.push(now.saturating_duration_since(job.due));
    stats.from_send.push(now.saturating_duration_since(started));
    stats.last_answer = Some(now);
    match answer {
        Answer::Patched => stats.patched += 1,
        Answer::Unchanged => {}
        Answer::Status(_) => stats.status_errors += 1,
        Answer::Bad(_) => stats.bad_answers += 1,
    }
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn report(stats: &mut Stats, total: u64, start: Instant) {
    let errors = stats.transport_errors + stats.timeouts + stats.status_errors + stats.bad_answers;
    println!(
        "sent {total}  answered {}  patched {}  errors {errors} (no answer {}, timeout {}, non-200 {}, bad answer {})",
        stats.answered,
        stats.patched,
        stats.transport_errors,
        stats.timeouts,
        stats.status_errors,
        stats.bad_answers
    );
    let seconds = stats.last_answer.map_or(0.0, |last| {
        last.saturating_duration_since(start).as_secs_f64()
    });
    let achieved = if seconds > 0.0 {
        stats.answered as f64 / seconds
    } else {
        0.0
    };
    println!(
        "achieved {achieved:.1} reviews/s (answers from the first due time to the last answer)"
    );
    println!(
        "latency µs from due time: {}",
        percentiles(&mut stats.latencies)
    );
    println!(
        "start delay µs (due time to handed to a connection): {}",
        percentiles(&mut stats.start_delays)
    );
    println!(
        "latency µs from handed to a connection (leaves out the start delay): {}",
        percentiles(&mut stats.from_send)
    );
}

/// `p50 N  p90 N  p99 N  p99.9 N  max N` in whole microseconds (nearest rank).
fn percentiles(values: &mut [Duration]) -> String {
    if values.is_empty() {
        return "none".to_owned();
    }
    values.sort_unstable();
    let at = |q: f64| {
        let rank = (q * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1].as_micros()
    };
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

/// One connection's way of sending a request.
#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("connecting to {}:{}", target.host, target.port))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
            .connect(target.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        if target.h2 {
            if alpn.as_deref() != Some(b"h2") {
                bail!("the server did not agree to h2 (ALPN)");
            }
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Ok(Self::H2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Ok(Self::H1(sender))
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    /// POSTs `review` and reads the whole answer.
    async fn exchange(
        &mut self,
        target: &Target,
        review: &Review,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::post(if target.h2 {
            target.uri.clone()
        } else {
            target
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()))
        })
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json, */*");
        let request = if target.h2 {
            request
        } else {
            request.header(HOST, target.authority.clone())
        };
        let request = request.body(Full::new(review.body.clone()))?;
        let response = match self {
            Self::H1(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            Self::H2(s) => s.send_request(request).await?,
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What a webhook's answer must hold; the rest is skipped, not kept.
#[derive(Debug, Deserialize)]
struct AnswerReview {
    kind: String,
    response: Option<AnswerResponse>,
}

#[derive(Debug, Deserialize)]
struct AnswerResponse {
    uid: String,
    allowed: bool,
    /// A base64 string, as Go encodes bytes; kube-rs writes an array of numbers, which the API
    /// server reads as well.
    patch: Option<IgnoredAny>,
}

/// Whether the answer is a 200 with an AdmissionReview allowing the request `uid`, and whether it
/// carries a patch.
fn judge(status: StatusCode, body: &[u8], uid: &str) -> Answer {
    if status != StatusCode::OK {
        return Answer::Status(status);
    }
    let review = match serde_json::from_slice::<AnswerReview>(body) {
        Ok(review) => review,
        Err(error) => return Answer::Bad(format!("the answer is not an AdmissionReview: {error}")),
    };
    match review.response {
        Some(r) if review.kind == "AdmissionReview" && r.uid == uid => {
            if !r.allowed {
                Answer::Bad("the pod is not allowed".to_owned())
            } else if r.patch.is_some() {
                Answer::Patched
            } else {
                Answer::Unchanged
            }
        }
        _ => Answer::Bad(format!(
            "the answer is not an AdmissionReview for uid {uid}"
        )),
    }
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let uri = args.target.clone();
    if uri.scheme_str() != Some("https") {
        bail!("--target must be an https:// URL");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("--target has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match &args.ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![if args.h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let authority = HeaderValue::try_from(format!("{host}:{port}"))?;
    Ok(Target {
        uri,
        authority,
        host,
        port,
        server_name,
        tls: Arc::new(config),
        h2: args.h2,
    })
}

/// Accepts any server certificate (no `--ca`), but still checks the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn write_cert(dir: &Path) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .self_signed(&key)?;
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    println!("{} {}", cert_path.display(), key_path.display());
    Ok(())
}

/// The captured reviews in `dir` (the golden fixtures: real AdmissionReviews of the test bed).
fn reviews(dir: &Path) -> anyhow::Result<(Vec<Review>, String)> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".request.json"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no *.request.json in {} (the golden fixtures)",
        dir.display()
    );
    let reviews = paths
        .iter()
        .map(|path| {
            let text = std::fs::read(path).with_context(|| path.display().to_string())?;
            let review: Value = serde_json::from_slice(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .map_or("?", |n| n.trim_end_matches(".request.json"))
                .to_owned();
            review_of(name, &review).with_context(|| path.display().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((reviews, format!("from {}", dir.display())))
}

fn review_of(name: String, review: &Value) -> anyhow::Result<Review> {
    let uid = review["request"]["uid"]
        .as_str()
        .ok_or_else(|| anyhow!("{name}: no request.uid"))?
        .to_owned();
    Ok(Review {
        name,
        uid,
        body: Bytes::from(serde_json::to_vec(review)?),
    })
}
