//! Reading the Prometheus text format in tests.

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the samples of an exposition (comments and blank lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // key="value" pairs; values may hold `,`, `}` and escaped quotes.
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    chars.next(); // the opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, other)) => value.push(other),
                                None => {}
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples of `name` whose labels include all of `labels`
/// (0 when there are none: a counter that never moved is not rendered).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_braces_and_commas_parse() {
        let text = "# TYPE x counter\n\
            http_server_requests_total{method=\"GET\",route=\"/jobs/{id}\",status=\"200\"} 3\n\
            http_server_requests_total{method=\"GET\",route=\"/a,b\",status=\"404\"} 2\n\
            plain 1.5\n";
        assert_eq!(sum(text, "http_server_requests_total", &[]), 5.0);
        assert_eq!(
            sum(
                text,
                "http_server_requests_total",
                &[("route", "/jobs/{id}")]
            ),
            3.0
        );
        assert_eq!(
            sum(text, "http_server_requests_total", &[("route", "/a,b")]),
            2.0
        );
        assert_eq!(sum(text, "plain", &[]), 1.5);
        assert_eq!(sum(text, "missing", &[]), 0.0);
    }
}
