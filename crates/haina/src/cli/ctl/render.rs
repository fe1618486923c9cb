//! Human output for `haina ctl` (and the other subcommands): key: value
//! lines flattened from the response JSON, tables for lists, sizes in
//! binary units, timestamps in RFC 3339.
//!
//! The table view is derived from the same JSON value `--output json`
//! prints, so the two can never disagree about what the plugin said.

use serde_json::Value;

/// How a response is laid out as text.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// `a.b: value` lines.
    Fields,
    /// One line per element of the array under this key.
    List(&'static str),
    /// ListVolumes entries as a table.
    Volumes,
    /// ListSnapshots entries as a table.
    Snapshots,
    /// NodeGetVolumeStats usage as a table, then the condition.
    Usage,
    /// `ctl nodes`: a table of nodes, then one of their volumes.
    Nodes,
}

pub fn render(v: &Value, view: &View) -> String {
    match view {
        View::Fields => {
            let mut lines = Vec::new();
            flatten("", v, &mut lines);
            if lines.is_empty() {
                return "OK\n".into();
            }
            fields(&lines)
        }
        View::List(key) => {
            let mut out = String::new();
            for item in v[*key].as_array().into_iter().flatten() {
                let parts: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k} {}", scalar(v)))
                    .collect();
                out.push_str(&parts.join(" "));
                out.push('\n');
            }
            out
        }
        View::Volumes => {
            let rows = v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let vol = &e["volume"];
                    let nodes = e["status"]["published_node_ids"]
                        .as_array()
                        .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    let cond = &e["status"]["volume_condition"];
                    vec![
                        scalar(&vol["volume_id"]),
                        vol["capacity_bytes"]
                            .as_i64()
                            .map(|b| human_bytes(b as u64))
                            .unwrap_or_default(),
                        if nodes.is_empty() { "-".into() } else { nodes },
                        match cond["abnormal"].as_bool() {
                            Some(true) => format!("abnormal: {}", scalar(&cond["message"])),
                            Some(false) => "ok".into(),
                            None => "-".into(),
                        },
                    ]
                })
                .collect();
            let mut out = table(
                &["VOLUME ID", "CAPACITY", "PUBLISHED ON", "CONDITION"],
                rows,
            );
            out.push_str(&next_token(v));
            out
        }
        View::Snapshots => {
            let rows = v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let s = &e["snapshot"];
                    vec![
                        scalar(&s["snapshot_id"]),
                        scalar(&s["source_volume_id"]),
                        s["size_bytes"]
                            .as_i64()
                            .map(|b| human_bytes(b as u64))
                            .unwrap_or_default(),
                        scalar(&s["ready_to_use"]),
                        scalar(&s["creation_time"]),
                    ]
                })
                .collect();
            let mut out = table(
                &["SNAPSHOT ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"],
                rows,
            );
            out.push_str(&next_token(v));
            out
        }
        View::Nodes => nodes(v),
        View::Usage => {
            let rows = v["usage"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    let bytes = u["unit"] == "BYTES";
                    let n = |k: &str| {
                        let x = u[k].as_i64().unwrap_or(0);
                        if bytes {
                            human_bytes(x as u64)
                        } else {
                            x.to_string()
                        }
                    };
                    vec![scalar(&u["unit"]), n("total"), n("used"), n("available")]
                })
                .collect();
            let mut out = table(&["UNIT", "TOTAL", "USED", "AVAILABLE"], rows);
            let c = &v["volume_condition"];
            if !c.is_null() {
                out.push_str(&format!(
                    "condition: {} ({})\n",
                    if c["abnormal"] == true {
                        "ABNORMAL"
                    } else {
                        "healthy"
                    },
                    scalar(&c["message"])
                ));
            }
            out
        }
    }
}

/// The nodes of every pool, then the volumes they hold (with the
/// data-path client of each attachment, which fencing blocklists).
fn nodes(v: &Value) -> String {
    let pools = v["pools"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    let mut vols = Vec::new();
    for p in &pools {
        for n in p["nodes"].as_array().into_iter().flatten() {
            let volumes: Vec<String> = n["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| scalar(&x["volume_id"]))
                .collect();
            let age = n["heartbeat_age_seconds"]
                .as_u64()
                .map(|a| format!("{a}s ago"))
                .unwrap_or_else(|| "-".into());
            let or_dash = |x: &Value| match scalar(x) {
                s if s.is_empty() => "-".to_string(),
                s => s,
            };
            rows.push(vec![
                scalar(&p["pool"]),
                scalar(&n["node_id"]),
                scalar(&n["state"]),
                age,
                or_dash(&n["address"]),
                or_dash(&n["started"]),
                if volumes.is_empty() {
                    "-".into()
                } else {
                    volumes.join(",")
                },
            ]);
            for x in n["volumes"].as_array().into_iter().flatten() {
                let published = match &x["published"] {
                    Value::Null => "-".to_string(),
                    pb => format!(
                        "{}{}{}",
                        scalar(&pb["access_mode"]),
                        if pb["readonly"] == true { ",ro" } else { "" },
                        if pb["block"] == true { ",block" } else { "" }
                    ),
                };
                let attached = match &x["attachment"] {
                    Value::Null => "-".to_string(),
                    at => format!(
                        "client.{} at {} ({})",
                        scalar(&at["client"]),
                        scalar(&at["address"]),
                        if at["live"] == true { "live" } else { "gone" }
                    ),
                };
                vols.push(vec![
                    scalar(&p["pool"]),
                    scalar(&x["volume_id"]),
                    scalar(&n["node_id"]),
                    published,
                    attached,
                ]);
            }
        }
    }
    let mut out = table(
        &[
            "POOL",
            "NODE",
            "STATE",
            "HEARTBEAT",
            "ADDRESS",
            "STARTED",
            "VOLUMES",
        ],
        rows,
    );
    if !vols.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["POOL", "VOLUME", "NODE", "PUBLISHED", "ATTACHMENT"],
            vols,
        ));
    }
    out
}

fn next_token(v: &Value) -> String {
    match v["next_token"].as_str() {
        Some(t) if !t.is_empty() => format!("next_token: {t}\n"),
        _ => String::new(),
    }
}

/// A JSON scalar as text (strings unquoted).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `a.b.c: value` lines; sizes get a binary-unit note; empty maps and
/// nulls are left out.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(o) => {
            // IDs and names first, the rest alphabetically.
            let rank = |k: &str| !(k.ends_with("_id") || k == "name");
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by_key(|k| (rank(k), k.as_str()));
            for k in keys {
                flatten(&key(k), &o[k.as_str()], out);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            if !a.is_empty() {
                out.push((
                    prefix.to_string(),
                    a.iter().map(scalar).collect::<Vec<_>>().join(", "),
                ));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Null => {}
        Value::Number(n) if is_size_key(prefix) => {
            let b = n.as_i64().unwrap_or(0);
            out.push((
                prefix.to_string(),
                format!("{b} ({})", human_bytes(b as u64)),
            ));
        }
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn is_size_key(k: &str) -> bool {
    let last = k.rsplit('.').next().unwrap_or(k);
    last.ends_with("_bytes") || last.ends_with("_capacity") || last.ends_with("_size")
}

/// Aligned `key: value` lines.
pub fn fields(lines: &[(String, String)]) -> String {
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:"), w = w + 1))
        .collect()
}

/// A left-aligned table with a header row.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `1073741824` → `1 GiB`; `1610612736` → `1.5 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round(), UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Seconds (and nanos) since the epoch as RFC 3339 UTC, e.g.
/// `2025-11-28T05:40:00Z` (civil-from-days, after H. Hinnant).
pub fn rfc3339(secs: i64, nanos: i32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if nanos > 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else {
        String::new()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_and_times() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 5_000_000),
            "2023-11-14T22:13:20.005Z"
        );
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn fields_flatten_and_note_sizes() {
        let v = json!({"volume": {"volume_id": "default.a", "capacity_bytes": 1073741824,
            "volume_context": {}, "accessible_topology": [{"segments": {"k": "n"}}]}});
        let text = render(&v, &View::Fields);
        assert!(text.contains("volume.volume_id:"), "{text}");
        assert!(text.contains("1073741824 (1 GiB)"), "{text}");
        assert!(
            text.contains("volume.accessible_topology[0].segments.k:"),
            "{text}"
        );
        assert_eq!(render(&json!({}), &View::Fields), "OK\n");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
