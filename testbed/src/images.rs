//! OCI images for the cluster, built `FROM scratch` with buildah (no daemon, vfs storage under the
//! cache), kept as `oci-archive` files under `$INFLIGHT_CACHE/images/`, and imported into the bed's
//! containerd. An image is rebuilt only when one of its files changed.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::components::{bin, version};
use crate::layout::{cache_dir, Layout};
use crate::process::run;
use crate::Error;

/// Registry part of every image name: never pulled, only imported.
pub const REGISTRY: &str = "inflight.local";
pub const PAUSE_IMAGE: &str = "inflight.local/pause:testbed";
/// Tag of the images of our own binaries.
pub const DEV_TAG: &str = "dev";
/// The user and group every image runs as (`nobody`-like, no home, no shell). A number, as an
/// image `FROM scratch` has no user database: pods that must run as non-root say it too
/// ([`crate::manifests::restricted`]).
pub const UID: i64 = 65532;

/// Reference of one of our images, e.g. `image_ref("inflight-demo-app")`.
pub fn image_ref(name: &str) -> String {
    format!("{REGISTRY}/{name}:{DEV_TAG}")
}

pub fn coredns_image() -> String {
    format!("{REGISTRY}/coredns:{}", version("COREDNS_VERSION"))
}

/// KEDA's one image: both binaries, the operator as entrypoint, the adapter by `command`.
pub const KEDA_IMAGE_NAME: &str = "inflight.local/keda";

pub fn keda_image() -> String {
    format!("{KEDA_IMAGE_NAME}:{}", version("KEDA_VERSION"))
}

/// Our binaries that get an image, by binary name.
pub const OURS: &[&str] = &[
    "inflight-proxy",
    "inflight-aggregator",
    "inflight-activator",
    "inflight-demo-app",
    "inflight-injector",
    "inflight-operator",
];

#[derive(Debug)]
struct Spec {
    /// Archive file stem.
    file: String,
    reference: String,
    /// (source, path in the image)
    files: Vec<(PathBuf, String)>,
    entrypoint: String,
}

impl Spec {
    fn single(file: &str, reference: String, binary: PathBuf, entrypoint: &str) -> Self {
        Self {
            file: file.to_owned(),
            reference,
            files: vec![(binary, entrypoint.to_owned())],
            entrypoint: entrypoint.to_owned(),
        }
    }
}

fn specs(bin_dir: &Path) -> Result<Vec<Spec>, Error> {
    let mut specs = vec![
        Spec::single("pause", PAUSE_IMAGE.into(), bin("pause", "pause"), "/pause"),
        Spec::single(
            "coredns",
            coredns_image(),
            bin("coredns", "coredns"),
            "/coredns",
        ),
        Spec {
            file: "keda".into(),
            reference: keda_image(),
            files: vec![
                (bin("keda", "keda"), "/keda".into()),
                (bin("keda", "keda-adapter"), "/keda-adapter".into()),
            ],
            entrypoint: "/keda".into(),
        },
    ];
    for name in OURS {
        let binary = bin_dir.join(name);
        if !binary.exists() {
            return Err(Error::Invalid(format!(
                "{} is missing: build it first (cargo build --release -p <crate>)",
                binary.display()
            )));
        }
        let mut spec = Spec::single(name, image_ref(name), binary.clone(), &format!("/{name}"));
        // Our binaries link glibc dynamically: copy in exactly the libraries ldd names.
        spec.files.extend(shared_libraries(&binary)?);
        specs.push(spec);
    }
    Ok(specs)
}

fn shared_libraries(binary: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let out = run("ldd", &[&binary.display().to_string()])?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path {
            let real = std::fs::canonicalize(path).map_err(|e| Error::io(Path::new(path), e))?;
            libs.push((real, path.to_owned()));
        }
    }
    Ok(libs)
}

fn archives() -> PathBuf {
    cache_dir().join("images")
}

/// What identifies an image's inputs: every file's path, size and modification time.
fn key(spec: &Spec) -> String {
    let mut key = format!("{} {}\n", spec.reference, spec.entrypoint);
    for (src, dst) in &spec.files {
        let meta = std::fs::metadata(src).ok();
        let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        key.push_str(&format!("{} {dst} {len} {mtime}\n", src.display()));
    }
    key
}

/// Builds every image whose inputs changed. `bin_dir` holds our release binaries.
pub fn build(bin_dir: &Path) -> Result<Vec<String>, Error> {
    let dir = archives();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut built = Vec::new();
    for spec in specs(bin_dir)? {
        let archive = dir.join(format!("{}.tar", spec.file));
        let key_file = dir.join(format!("{}.key", spec.file));
        let key = key(&spec);
        if archive.exists() && std::fs::read_to_string(&key_file).ok().as_deref() == Some(&key) {
            continue;
        }
        for (src, _) in &spec.files {
            if !src.exists() {
                return Err(Error::Invalid(format!(
                    "{} is missing: build the components first",
                    src.display()
                )));
            }
        }
        eprintln!("[testbed images] building {} ", spec.reference);
        buildah(&spec, &archive)?;
        std::fs::write(&key_file, key).map_err(|e| Error::io(&key_file, e))?;
        built.push(spec.reference);
    }
    Ok(built)
}

fn buildah(spec: &Spec, archive: &Path) -> Result<(), Error> {
    let storage = cache_dir().join("buildah");
    let root = storage.join("root").display().to_string();
    let runroot = storage.join("runroot").display().to_string();
    let b = |args: &[&str]| -> Result<String, Error> {
        let mut all = vec![
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--storage-driver",
            "vfs",
        ];
        all.extend_from_slice(args);
        run("buildah", &all)
    };
    let container = b(&["from", "scratch"])?.trim().to_owned();
    let result = (|| {
        for (src, dst) in &spec.files {
            b(&[
                "copy",
                "--chmod",
                "0755",
                &container,
                &src.display().to_string(),
                dst,
            ])?;
        }
        // A writable /tmp: some Go programs (KEDA's certificate code among them) expect one.
        let empty = storage.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| Error::io(&empty, e))?;
        b(&[
            "copy",
            "--chmod",
            "1777",
            &container,
            &empty.display().to_string(),
            "/tmp",
        ])?;
        let entrypoint = format!("[\"{}\"]", spec.entrypoint);
        let user = format!("{UID}:{UID}");
        b(&[
            "config",
            "--user",
            &user,
            "--entrypoint",
            &entrypoint,
            "--cmd",
            "",
            &container,
        ])?;
        let _ = std::fs::remove_file(archive);
        b(&[
            "commit",
            "--quiet",
            &container,
            &format!("oci-archive:{}:{}", archive.display(), spec.reference),
        ])?;
        Ok(())
    })();
    let _ = b(&["rm", &container]);
    result
}

fn archive_names() -> impl Iterator<Item = &'static str> {
    ["pause", "coredns", "keda"]
        .into_iter()
        .chain(OURS.iter().copied())
}

/// The keys of the archives as they are now: what a bed records when it imports them.
fn archive_keys() -> String {
    archive_names()
        .map(|n| std::fs::read_to_string(archives().join(format!("{n}.key"))).unwrap_or_default())
        .collect()
}

/// Whether an image was rebuilt since the bed imported its images.
pub fn stale(layout: &Layout) -> bool {
    std::fs::read_to_string(layout.dir().join("images.keys")).ok() != Some(archive_keys())
}

/// Imports every archive into the bed's containerd (namespace `k8s.io`, where the kubelet looks).
pub fn import(layout: &Layout) -> Result<(), Error> {
    let dir = archives();
    let sock = layout.containerd_socket().display().to_string();
    let keys = archive_keys();
    for name in archive_names() {
        let archive = dir.join(format!("{name}.tar"));
        if !archive.exists() {
            return Err(Error::Invalid(format!(
                "image archive {} is missing: run `inflight-testbed images` first",
                archive.display()
            )));
        }
        let archive = archive.display().to_string();
        run(
            "ctr",
            &["-a", &sock, "-n", "k8s.io", "images", "import", &archive],
        )?;
    }
    let record = layout.dir().join("images.keys");
    std::fs::write(&record, keys).map_err(|e| Error::io(&record, e))
}
