//! `inflight-crdgen`: prints the HTTPAutoscaler CRD, or with `--check FILE` fails when FILE
//! differs from it (the chart's copy must be the type's).

fn main() -> std::process::ExitCode {
    let crd = inflight_api::crd_text();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            print!("{crd}");
            std::process::ExitCode::SUCCESS
        }
        [flag, file] if flag == "--check" => match std::fs::read_to_string(file) {
            Ok(text) if text == crd => std::process::ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!("{file} differs from the HTTPAutoscaler type: run `cargo run -q -p inflight-api > {file}`");
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: inflight-crdgen [--check FILE]");
            std::process::ExitCode::from(2)
        }
    }
}
