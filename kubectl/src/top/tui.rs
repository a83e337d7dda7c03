//! The live view: the terminal in raw mode on the alternate screen, a snapshot every interval,
//! q / Esc / Ctrl-C to quit. The terminal is given back on every way out, a panic included
//! (ratatui's hook restores it before the panic is printed).

use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use super::render::{draw, Chrome};
use super::{gather, Scope, Snapshot};
use crate::connect::Connection;
use crate::Error;

/// What a key or a terminal event asks of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Quit,
    Redraw,
}

/// The terminal back as it was when this is dropped: on a return, an error or a panic's unwind.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub async fn run(
    connection: &Connection,
    scope: &Scope,
    limit: usize,
    interval: Duration,
) -> Result<(), Error> {
    // The first snapshot before the screen is taken: a missing CRD is an error on a normal
    // terminal, not a flash of the alternate screen.
    let mut snapshot = gather::snapshot(connection, scope, limit).await?;
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let inputs = keys();
    let mut inputs = inputs;
    let mut chrome = Chrome {
        title: title(scope, interval),
        error: None,
    };
    loop {
        terminal.draw(|f| draw(f, &snapshot, &chrome))?;
        // Wait out the interval, redrawing on a resize; then refresh, still answering keys.
        let pause = tokio::time::sleep(interval);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                input = inputs.recv() => match input {
                    Some(Input::Quit) | None => return Ok(()),
                    Some(Input::Redraw) => { terminal.draw(|f| draw(f, &snapshot, &chrome))?; }
                },
            }
        }
        let refresh = gather::snapshot(connection, scope, limit);
        tokio::pin!(refresh);
        let result: Result<Snapshot, Error> = loop {
            tokio::select! {
                result = &mut refresh => break result,
                input = inputs.recv() => match input {
                    Some(Input::Quit) | None => return Ok(()),
                    Some(Input::Redraw) => { terminal.draw(|f| draw(f, &snapshot, &chrome))?; }
                },
            }
        };
        match result {
            Ok(s) => {
                snapshot = s;
                chrome.error = None;
            }
            Err(e) => chrome.error = Some(e.to_string()),
        }
    }
}

fn title(scope: &Scope, interval: Duration) -> String {
    let scope = match scope {
        Scope::Namespace(ns) => format!("namespace {ns}"),
        Scope::All => "all namespaces".into(),
    };
    format!(
        "inflight top · {scope} · every {} · q to quit",
        humantime::format_duration(interval)
    )
}

/// The terminal's events, read on a thread of their own (crossterm's read blocks), as inputs.
/// The thread ends when the view has gone (its channel closed) or the terminal fails.
fn keys() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || loop {
        let input = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
                _ => continue,
            },
            Ok(Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => Input::Quit,
        };
        if tx.blocking_send(input).is_err() || input == Input::Quit {
            return;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_names_the_scope_and_the_way_out() {
        assert_eq!(
            title(&Scope::Namespace("shop".into()), Duration::from_secs(2)),
            "inflight top · namespace shop · every 2s · q to quit"
        );
        assert!(title(&Scope::All, Duration::from_millis(500)).contains("all namespaces"));
    }
}
