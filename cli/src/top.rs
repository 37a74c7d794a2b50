//! `sluice status` and `sluice top`: read pods' `/status` over HTTP. `top` is a live terminal
//! view (ratatui over crossterm: plain ANSI, so it works over SSH) of one or more pods:
//! per-partition lag with its trend, throughput, error rates and backpressure. One fetch thread
//! per pod, so a pod that does not answer never freezes the screen; `q`, Esc or Ctrl-C quits
//! and restores the terminal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use sluice_runtime::status::{Status, human_duration};

/// `host:port` or a URL -> the base URL of a pod's admin endpoint.
pub fn base_url(admin: &str) -> String {
    let admin = admin.trim().trim_end_matches('/');
    if admin.starts_with("http://") || admin.starts_with("https://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// GETs `/status` of the pod at `admin`.
pub fn fetch_status(admin: &str) -> Result<Status, String> {
    fetch_with(&agent(), admin)
}

fn fetch_with(agent: &ureq::Agent, admin: &str) -> Result<Status, String> {
    let url = format!("{}/status", base_url(admin));
    let body = agent
        .get(&url)
        .call()
        .map_err(|e| format!("{url}: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{url}: not a sluice /status document: {e}"))
}

/// Samples kept for a trend.
const HISTORY: usize = 40;

/// What `top` knows about one pod.
#[derive(Debug, Default)]
struct Pod {
    url: String,
    latest: Option<(Instant, Status)>,
    previous: Option<(Instant, Status)>,
    error: Option<String>,
    /// Lag samples per `topic/partition`.
    lag: HashMap<String, VecDeque<i64>>,
}

impl Pod {
    fn update(&mut self, result: Result<Status, String>) {
        match result {
            Ok(status) => {
                for p in &status.partitions {
                    let history = self
                        .lag
                        .entry(format!("{}/{}", p.topic, p.partition))
                        .or_default();
                    if history.len() == HISTORY {
                        history.pop_front();
                    }
                    history.push_back(p.lag.unwrap_or(0));
                }
                self.previous = self.latest.take();
                self.latest = Some((Instant::now(), status));
                self.error = None;
            }
            Err(err) => self.error = Some(err),
        }
    }

    /// Per-second rate of `f` between the last two samples.
    fn rate(&self, f: impl Fn(&Status) -> u64) -> Option<f64> {
        let ((t1, new), (t0, old)) = (self.latest.as_ref()?, self.previous.as_ref()?);
        let dt = t1.duration_since(*t0).as_secs_f64();
        (dt > 0.0).then(|| f(new).saturating_sub(f(old)) as f64 / dt)
    }
}

/// Lag history as a one-line chart scaled to its own maximum.
pub fn trend(samples: &VecDeque<i64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = samples.iter().copied().max().unwrap_or(0).max(1);
    samples
        .iter()
        .map(|v| BARS[((*v).max(0) * 7 / max) as usize])
        .collect()
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}/s"))
}

fn render_pod(frame: &mut ratatui::Frame<'_>, area: Rect, pod: &Pod) {
    let Some((_, status)) = &pod.latest else {
        let text = pod
            .error
            .clone()
            .unwrap_or_else(|| "connecting...".to_owned());
        let block = Block::default()
            .borders(Borders::ALL)
            .title(pod.url.clone());
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    };
    let ready = if status.ready {
        Span::styled("ready", Style::default().fg(Color::Green))
    } else {
        Span::styled(
            format!("NOT READY ({})", status.not_ready.join(", ")),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    };
    let condition = &status.condition;
    let color = match condition.name.as_str() {
        "Healthy" | "Idle" | "" => Color::Green,
        "Starved" | "Unassigned" => Color::Yellow,
        _ => Color::Red,
    };
    let about = if condition.subjects.is_empty() {
        String::new()
    } else {
        format!(" {}", condition.subjects.join(" "))
    };
    let mut title = vec![
        Span::raw(format!(" {}  pipeline {}  ", pod.url, status.pipeline)),
        ready,
        Span::raw("  "),
        Span::styled(
            format!(
                "{} {}{about}",
                condition.name,
                human_duration(condition.seconds)
            ),
            Style::default().fg(color),
        ),
        Span::raw(format!("  up {} ", human_duration(status.uptime_seconds))),
    ];
    if let Some(err) = &pod.error {
        title.push(Span::styled(
            format!(" stale: {err} "),
            Style::default().fg(Color::Yellow),
        ));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Line::from(title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [summary, table_area] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(inner);

    let out_rate = pod.rate(|s| s.totals.records_emitted.values().sum());
    let in_rate = pod.rate(|s| s.totals.events_consumed);
    let failure_rate = pod.rate(|s| s.totals.event_failures.values().sum());
    let paused = status.partitions.iter().filter(|p| p.paused).count();
    let held: usize = status.partitions.iter().map(|p| p.held).sum();
    let in_flight: usize = status.partitions.iter().map(|p| p.in_flight).sum();
    let total_lag: i64 = status.partitions.iter().filter_map(|p| p.lag).sum();
    let busy: Vec<String> = status
        .workers
        .iter()
        .map(|w| format!("{}:{:?}", w.id, w.state).to_lowercase())
        .collect();
    let lines = vec![
        Line::from(format!(
            "in {}  out {}  failures {}  dead letters {}  skipped {}  lag {total_lag}",
            rate_text(in_rate),
            rate_text(out_rate),
            failure_rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s")),
            status.totals.dead_letters,
            status.totals.events_skipped,
        )),
        Line::from(format!(
            "backpressure: paused {paused}/{}  held {held}  in flight {in_flight}  pauses {}   workers {}",
            status.partitions.len(),
            status.totals.partition_pauses,
            busy.join(" ")
        )),
    ];
    frame.render_widget(Paragraph::new(lines), summary);

    let rows: Vec<Row<'_>> = status
        .partitions
        .iter()
        .map(|p| {
            let key = format!("{}/{}", p.topic, p.partition);
            let chart = pod.lag.get(&key).map(trend).unwrap_or_default();
            let events = pod.previous.as_ref().and_then(|(t0, old)| {
                let (t1, _) = pod.latest.as_ref()?;
                let before = old
                    .partitions
                    .iter()
                    .find(|o| o.topic == p.topic && o.partition == p.partition)?
                    .events?;
                let dt = t1.duration_since(*t0).as_secs_f64();
                (dt > 0.0).then(|| p.events.unwrap_or(0).saturating_sub(before) as f64 / dt)
            });
            let style = if p.paused {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            };
            Row::new(vec![
                key,
                p.lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                chart,
                rate_text(events),
                p.in_flight.to_string(),
                p.held.to_string(),
                if p.paused { "PAUSED" } else { "" }.to_owned(),
            ])
            .style(style)
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(9),
            Constraint::Length(HISTORY as u16),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(6),
        ],
    )
    .header(
        Row::new(vec![
            "PARTITION",
            "LAG",
            "LAG TREND",
            "RATE",
            "IN FLIGHT",
            "HELD",
            "",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    );
    frame.render_widget(table, table_area);
}

/// `sluice top`: runs until q, Esc or Ctrl-C.
pub fn run(admins: &[String], every: Duration) -> std::io::Result<()> {
    let pods: Vec<Arc<Mutex<Pod>>> = admins
        .iter()
        .map(|a| {
            Arc::new(Mutex::new(Pod {
                url: base_url(a),
                ..Pod::default()
            }))
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for pod in &pods {
        let (pod, stop) = (pod.clone(), stop.clone());
        std::thread::spawn(move || {
            let agent = agent();
            let url = pod.lock().unwrap_or_else(|e| e.into_inner()).url.clone();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let result = fetch_with(&agent, &url);
                pod.lock().unwrap_or_else(|e| e.into_inner()).update(result);
                std::thread::sleep(every);
            }
        });
    }
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|frame| {
                let area = frame.area();
                let [head, body] =
                    Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
                frame.render_widget(
                    Paragraph::new(format!(
                        "sluice top: {} pod(s), every {}s. q quits",
                        pods.len(),
                        every.as_secs_f64()
                    ))
                    .style(Style::default().add_modifier(Modifier::BOLD)),
                    head,
                );
                let areas =
                    Layout::vertical(pods.iter().map(|_| Constraint::Ratio(1, pods.len() as u32)))
                        .split(body);
                for (pod, area) in pods.iter().zip(areas.iter()) {
                    render_pod(frame, *area, &pod.lock().unwrap_or_else(|e| e.into_inner()));
                }
            })?;
            if event::poll(Duration::from_millis(250))? {
                if let Event::Key(key) = event::read()? {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    if key.kind == KeyEventKind::Press
                        && (ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc))
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_become_urls() {
        assert_eq!(base_url("127.0.0.1:9464"), "http://127.0.0.1:9464");
        assert_eq!(base_url("http://pod:9464/"), "http://pod:9464");
    }

    #[test]
    fn the_trend_scales_to_its_maximum() {
        let samples: VecDeque<i64> = [0, 50, 100, 25].into_iter().collect();
        assert_eq!(trend(&samples), "▁▄█▂");
        assert_eq!(trend(&[0, 0].into_iter().collect()), "▁▁");
    }
}
