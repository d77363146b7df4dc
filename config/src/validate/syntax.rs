//! Syntax checks on single values (tokens, host names, target addresses) and
//! the did-you-mean helper, kept apart from the rules that walk the config.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Longest part of a user's value quoted back in a message.
const MAX_QUOTED_CHARS: usize = 64;

/// `s` in double quotes with escapes, shortened when long: a megabyte-long
/// value must not become a megabyte-long error message.
pub(super) fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// RFC 9110 `token`: one or more `tchar`.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a header may not be configured by header ops, if it may not.
pub(super) fn reserved_header(name: &str) -> Option<&'static str> {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    ];
    let lower = name.to_ascii_lowercase();
    if HOP_BY_HOP.contains(&lower.as_str()) {
        Some("it is a hop-by-hop header, managed by weir for each connection")
    } else if lower == "content-length" {
        Some("weir computes it from the body")
    } else if lower == "host" {
        Some("weir sets it from the request and the upstream target")
    } else {
        None
    }
}

/// The regex crate's error is a multi-line drawing; keep its `error:` sentence.
pub(super) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("does not compile");
    line.trim().to_owned()
}

/// Problem with a `match.host`: an exact name, or `*.` followed by one.
pub(super) fn host_problem(host: &str) -> Option<String> {
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host, false),
    };
    if name.contains('*') {
        return Some("a wildcard is only allowed as a leading `*.`, e.g. `*.example.com`".into());
    }
    if name.contains(':') {
        return Some("must not include a port (the Host port is ignored when matching)".into());
    }
    if name.is_empty() {
        return Some(
            if wildcard {
                "`*.` must be followed by a domain"
            } else {
                "must not be empty"
            }
            .into(),
        );
    }
    if name.split('.').any(str::is_empty) {
        return Some("contains an empty label".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        .map(|c| format!("invalid character {c:?} (letters, digits, `-` and `.` only)"))
}

/// Splits and checks a target address: `host:port`, where host is an IPv4
/// address, a bracketed IPv6 address (`[::1]:8080`) or a DNS name, and port is
/// 1-65535. Returns the host (IPv6 without brackets) and the port; the error
/// says what is wrong in words meant for the configuration's author.
///
/// ```
/// assert_eq!(weir_config::parse_target_address("[::1]:80"), Ok(("::1".to_owned(), 80)));
/// assert!(weir_config::parse_target_address("backend").is_err());
/// ```
pub fn parse_target_address(s: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("invalid target address {}: {why}", quoted(s));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("missing `]` after the IPv6 address"))?;
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not a valid IPv6 address between `[` and `]`"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("missing port (expected [ipv6]:port, e.g. [::1]:8080)"))?;
        (ip, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("missing port (expected host:port, e.g. 10.0.0.1:8080)"))?;
        if host.contains(':') {
            return Err(bad("IPv6 addresses must be in brackets, e.g. [::1]:8080"));
        }
        if let Some(why) = target_host_problem(host) {
            return Err(bad(&why));
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_owned(), p)),
        _ => Err(bad("the port must be from 1 to 65535")),
    }
}

/// Problem with the host part of a target: IPv4 address or DNS name.
fn target_host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("missing host before the port".into());
    }
    // A name made only of digits and dots can only be meant as an IPv4 address.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => None,
            Err(_) => Some(format!("{} is not a valid IPv4 address", quoted(host))),
        };
    }
    if host.len() > 253 {
        return Some("the host name is longer than 253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Some("the host name contains an empty label".into());
        }
        if label.len() > 63 {
            return Some(format!(
                "the host name label {} is longer than 63 characters",
                quoted(label)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "the host name label {} starts or ends with `-`",
                quoted(label)
            ));
        }
        // `_` is not in RFC 1123, but resolvers accept it and container
        // platforms hand out such names (`my_service`).
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Some(format!("invalid character {c:?} in the host name"));
        }
    }
    None
}

/// Form used to spot duplicate targets: IPs in canonical text, names lower-cased.
pub(super) fn canonical_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// The candidate closest to `name`, if it is close enough to be a typo.
pub(super) fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Typos are short edits of short names; bounding the length keeps the
    // quadratic distance cheap whatever the file contains.
    const MAX_LEN: usize = 128;
    if name.len() > MAX_LEN {
        return None;
    }
    candidates
        .iter()
        .copied()
        .filter(|c| c.len() <= MAX_LEN && c.len().abs_diff(name.len()) <= 8)
        .map(|c| (levenshtein(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= 2 && d < c.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance (insertions, deletions, substitutions) between two strings.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("api", "apii"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("héllo", "hello"), 1);
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(did_you_mean("apii", &["web", "api"]), Some("api"));
        assert_eq!(did_you_mean("API", &["api"]), Some("api"));
        assert_eq!(did_you_mean("b", &["a"]), None);
        assert_eq!(did_you_mean("payments", &["api", "web"]), None);
        assert_eq!(did_you_mean("x", &[]), None);
    }

    #[test]
    fn target_addresses() {
        let ok = |s: &str, h: &str, p: u16| {
            assert_eq!(parse_target_address(s), Ok((h.to_owned(), p)), "{s}")
        };
        ok("127.0.0.1:9000", "127.0.0.1", 9000);
        ok("[::1]:80", "::1", 80);
        ok("[2001:db8::1]:65535", "2001:db8::1", 65535);
        ok("backend.internal:8080", "backend.internal", 8080);
        ok("my_service:1", "my_service", 1);
        ok("localhost:80", "localhost", 80);
        for bad in [
            "",
            ":80",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:http",
            "host:-1",
            "::1:80",
            "[::1]",
            "[::1]80",
            "[zz]:80",
            "[::1:80",
            "256.0.0.1:80",
            "1.2.3:80",
            "a..b:80",
            "-a.com:80",
            "a b:80",
            "host:+80",
            "é.com:80",
        ] {
            assert!(
                parse_target_address(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("{}:80", "a".repeat(64));
        assert!(parse_target_address(&long).unwrap_err().contains("63"));
    }

    #[test]
    fn hosts() {
        for good in ["api.example.com", "*.example.com", "localhost", "a-b.c1"] {
            assert_eq!(host_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "api.*",
            "api.example.com:80",
            "a..b",
            ".a",
            "a_b",
            "*example.com",
        ] {
            assert!(host_problem(bad).is_some(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn long_values_are_shortened_when_quoted() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "é".repeat(1000);
        let q = quoted(&long);
        assert!(
            q.ends_with("...") && q.chars().count() == MAX_QUOTED_CHARS + 5,
            "{q}"
        );
    }

    #[test]
    fn tokens_and_regex_reasons() {
        assert!(is_token("GET") && is_token("x-foo") && is_token("M-SEARCH"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a:b") && !is_token("é"));
        // Built at run time: clippy rejects invalid regex literals.
        let pattern = String::from("(");
        let err = regex::Regex::new(&pattern).unwrap_err();
        assert_eq!(regex_reason(&err), "unclosed group");
    }
}
