//! A [`Snapshot`] as text: the plain table scripts read, and the live view's widgets. Both take
//! their cells from [`cells`], so they never disagree.

use inflight_api::{MetricType, Mode};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::{More, Row, Scope, Snapshot};
use crate::format::{age, aligned, latency, number};

/// The columns. `INFLIGHT/TARGET` is requests in flight now over what the replicas take at the
/// target (`target × max(replicas, 1)`); for a `requestRate` autoscaler that comparison is in
/// `RPS`. `ACTIVATED` is the age of the last activation from zero.
pub const HEADERS: [&str; 9] = [
    "NAMESPACE",
    "NAME",
    "MODE",
    "REPLICAS",
    "READY",
    "INFLIGHT/TARGET",
    "RPS",
    "P99",
    "ACTIVATED",
];

/// What the labels mean, for the live view's footer.
pub const LEGEND: &str = "INFLIGHT/TARGET: requests in flight / target × max(replicas,1) \
     (RPS/TARGET for requestRate autoscalers) · RPS, P99: the SMI API's window · ACTIVATED: \
     since the last activation from zero";

/// One autoscaler's cells, in [`HEADERS`]' order.
pub fn cells(row: &Row) -> [String; 9] {
    let capacity = number(row.capacity());
    let (in_flight, rps) = match row.metric {
        MetricType::Concurrency => (
            format!("{}/{capacity}", number(row.in_flight)),
            row.traffic.map_or("-".into(), |t| number(t.rps)),
        ),
        MetricType::RequestRate => (
            number(row.in_flight),
            format!(
                "{}/{capacity}",
                row.traffic.map_or("-".into(), |t| number(t.rps))
            ),
        ),
    };
    [
        row.namespace.clone(),
        row.name.clone(),
        match row.mode {
            Some(Mode::Serve) => "Serve".into(),
            Some(Mode::Proxy) => "Proxy".into(),
            None => "-".into(),
        },
        row.replicas.to_string(),
        row.ready.to_string(),
        in_flight,
        rps,
        row.traffic.and_then(|t| t.p99).map_or("-".into(), latency),
        row.last_activation.map_or("-".into(), age),
    ]
}

/// The lines under the rows: what the limit left out, and why traffic is missing.
pub fn footer(snapshot: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    match snapshot.more {
        More::None => {}
        More::Exactly(n) => lines.push(format!("… and {n} more")),
        More::Unknown => lines.push("… and more".into()),
    }
    if snapshot.rows.is_empty() {
        lines.push(match &snapshot.scope {
            Scope::Namespace(ns) => format!("No HTTPAutoscalers in namespace {ns}."),
            Scope::All => "No HTTPAutoscalers in any namespace.".into(),
        });
    }
    lines.extend(snapshot.traffic_note.clone());
    lines
}

/// The plain table: columns padded as kubectl pads them (three spaces apart), then the footer.
pub fn table(snapshot: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(HEADERS.map(str::to_owned).to_vec())
        .chain(snapshot.rows.iter().map(|r| cells(r).to_vec()))
        .collect();
    let mut out = String::new();
    for line in aligned(&rows, "").into_iter().chain(footer(snapshot)) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Each column as wide as its widest cell or header (in characters, as a terminal shows them).
fn widths(rows: &[[String; 9]]) -> [usize; 9] {
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    widths
}

/// What the live view shows above and below the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chrome {
    /// The title: scope, refresh interval, keys.
    pub title: String,
    /// The last refresh's failure, while the previous snapshot stays on screen.
    pub error: Option<String>,
}

/// Draws the live view: title, table, footer and legend.
pub fn draw(frame: &mut Frame<'_>, snapshot: &Snapshot, view: &Chrome) {
    let notes: Vec<Line<'_>> = footer(snapshot)
        .into_iter()
        .chain(view.error.iter().map(|e| format!("refresh failed: {e}")))
        .map(Line::from)
        .chain(std::iter::once(
            Line::from(LEGEND).style(Style::new().add_modifier(Modifier::DIM)),
        ))
        .collect();
    let footer_height = u16::try_from(notes.len()).unwrap_or(u16::MAX);
    let [title, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(2),
        Constraint::Length(footer_height),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(view.title.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    let rows: Vec<[String; 9]> = snapshot.rows.iter().map(cells).collect();
    let widths = widths(&rows).map(|w| Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX)));
    let header = TableRow::new(HEADERS.map(Cell::from))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let table = Table::new(rows.into_iter().map(TableRow::new), widths)
        .header(header)
        .column_spacing(2);
    frame.render_widget(table, body);
    frame.render_widget(
        Paragraph::new(notes).wrap(ratatui::widgets::Wrap { trim: true }),
        foot,
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::Traffic;
    use super::*;

    fn web() -> Row {
        Row {
            namespace: "shop".into(),
            name: "web".into(),
            mode: Some(Mode::Serve),
            replicas: 3,
            ready: 2,
            in_flight: 5.24,
            metric: MetricType::Concurrency,
            target: 2.0,
            traffic: Some(Traffic {
                rps: 12.5,
                p99: Some(Duration::from_millis(480)),
            }),
            last_activation: Some(Duration::from_secs(183)),
        }
    }

    fn idle() -> Row {
        Row {
            namespace: "shop".into(),
            name: "api".into(),
            mode: Some(Mode::Proxy),
            replicas: 0,
            ready: 0,
            in_flight: 0.0,
            metric: MetricType::RequestRate,
            target: 5.0,
            traffic: None,
            last_activation: None,
        }
    }

    fn snapshot(rows: Vec<Row>) -> Snapshot {
        Snapshot {
            scope: Scope::Namespace("shop".into()),
            rows,
            more: More::None,
            traffic_note: None,
        }
    }

    #[test]
    fn a_row_shows_in_flight_against_target_times_replicas() {
        assert_eq!(
            cells(&web()),
            ["shop", "web", "Serve", "3", "2", "5.2/6", "12.5", "480ms", "3m3s"]
        );
        // At zero the target of one replica; a request-rate autoscaler compares its RPS.
        assert_eq!(
            cells(&idle()),
            ["shop", "api", "Proxy", "0", "0", "0", "-/5", "-", "-"]
        );
    }

    #[test]
    fn the_plain_table_is_aligned_under_its_header() {
        let text = table(&snapshot(vec![web(), idle()]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("NAMESPACE   NAME   MODE    REPLICAS"),
            "{text}"
        );
        let col = lines[0].find("INFLIGHT/TARGET").unwrap();
        assert_eq!(&lines[1][col..col + 5], "5.2/6");
        assert_eq!(&lines[2][col..col + 1], "0");
        assert!(lines[1].ends_with("3m3s"));
    }

    #[test]
    fn the_footer_counts_what_the_limit_left_out_and_says_why_traffic_is_missing() {
        let mut s = snapshot(vec![web()]);
        s.more = More::Exactly(7);
        s.traffic_note = Some("requests/s and p99 unavailable: the SMI API is not served".into());
        let text = table(&s);
        assert!(text.contains("\n… and 7 more\n"), "{text}");
        assert!(text.ends_with("the SMI API is not served\n"), "{text}");
        let empty = table(&snapshot(vec![]));
        assert!(
            empty.contains("No HTTPAutoscalers in namespace shop."),
            "{empty}"
        );
    }

    fn screen(snapshot: &Snapshot, view: &Chrome, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, snapshot, view)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_live_view_shows_each_autoscalers_figures() {
        let view = Chrome {
            title: "inflight top · namespace shop · every 2s · q to quit".into(),
            error: None,
        };
        let lines = screen(&snapshot(vec![web(), idle()]), &view, 120, 12);
        let all = lines.join("\n");
        assert!(
            lines[0].starts_with("inflight top · namespace shop"),
            "{all}"
        );
        assert!(
            lines[1].contains("NAMESPACE") && lines[1].contains("INFLIGHT/TARGET"),
            "{all}"
        );
        let web = lines.iter().find(|l| l.contains(" web ")).unwrap();
        for figure in ["Serve", "5.2/6", "12.5", "480ms", "3m3s"] {
            assert!(web.contains(figure), "{figure} in {web}");
        }
        let api = lines.iter().find(|l| l.contains(" api ")).unwrap();
        for figure in ["Proxy", "-/5"] {
            assert!(api.contains(figure), "{figure} in {api}");
        }
        assert!(all.contains("INFLIGHT/TARGET: requests in flight"), "{all}");
    }

    #[test]
    fn the_live_view_keeps_the_last_figures_and_says_a_refresh_failed() {
        let view = Chrome {
            title: "t".into(),
            error: Some("listing HTTPAutoscalers: no answer within 5s".into()),
        };
        let mut s = snapshot(vec![web()]);
        s.more = More::Unknown;
        let all = screen(&s, &view, 100, 12).join("\n");
        assert!(all.contains("5.2/6"), "{all}");
        assert!(all.contains("… and more"), "{all}");
        assert!(
            all.contains("refresh failed: listing HTTPAutoscalers: no answer within 5s"),
            "{all}"
        );
    }
}
