//! The one grammar of an email address, for every service: auth-svc refuses
//! at CreateUser what notify-svc could not mail, and notify-svc checks the
//! same before it builds a message.
//!
//! A deliberately plain subset of RFC 5321/5322 that every mail system and
//! shell quoting handles: a dot-atom local part of ASCII `atext` (no quoted
//! strings, no comments), `@`, and a DNS host name of two labels or more (no
//! IP literals). Internationalised domains are given in their ASCII
//! (punycode) form.

/// Longest address (RFC 5321's path limit, less the angle brackets).
pub const MAX_LEN: usize = 254;
const MAX_LOCAL: usize = 64;
const MAX_LABEL: usize = 63;

/// Characters of RFC 5322 `atext` besides letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Checks `addr` (as given: no trimming, no case folding); says what is
/// wrong, fit to show a user.
pub fn check(addr: &str) -> Result<(), &'static str> {
    if addr.is_empty() {
        return Err("is empty");
    }
    if addr.len() > MAX_LEN {
        return Err("is longer than 254 characters");
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("is not an email address (no @)");
    };
    check_local(local)?;
    check_domain(domain)
}

fn dot_separated_ok(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.ends_with('.') && !s.contains("..")
}

fn check_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() || local.len() > MAX_LOCAL {
        return Err("has an empty or over-long part before the @");
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c);
    if !local.chars().all(|c| c == '.' || atext(c)) {
        return Err("may hold only letters, digits, dots and !#$%&'*+-/=?^_`{|}~ before the @");
    }
    if !dot_separated_ok(local) {
        return Err("has a misplaced dot before the @");
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    const BAD: &str = "has an invalid domain";
    if !dot_separated_ok(domain) || domain.len() > 253 {
        return Err(BAD);
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("has a domain without a dot");
    }
    for label in &labels {
        let ldh = label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ldh || label.len() > MAX_LABEL || label.starts_with('-') || label.ends_with('-') {
            return Err(BAD);
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(BAD); // an IP address, not a host name
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses real people have; the grammar takes them all.
    const GOOD: &[&str] = &[
        "alice@example.com",
        "o'brien@example.com",
        "first.last+tag@sub.example.co.uk",
        "x_y-z@e-xample.io",
        "a!#$%&'*+-/=?^_`{|}~@example.com",
        "1234@xn--bcher-kva.de",
    ];

    /// What probing sent, and the usual malformed ones.
    const BAD: &[&str] = &[
        "",
        "x'$(id)'@example.com",
        "probe-\"q\"@example.com",
        "\"quoted\"@example.com",
        "a b@example.com",
        "a@b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "a@example",
        "a@-example.com",
        "a@example-.com",
        "a@exa_mple.com",
        "a@127.0.0.1",
        "a@[127.0.0.1]",
        "a@example..com",
        "a@bücher.de",
        "(comment)a@example.com",
        "a\u{0}@example.com",
    ];

    #[test]
    fn real_addresses_pass_and_hostile_ones_do_not() {
        for a in GOOD {
            assert_eq!(check(a), Ok(()), "{a:?}");
        }
        for a in BAD {
            assert!(check(a).is_err(), "{a:?} was accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(check(&long_local).is_err());
        let long = format!("a@{}.com", "b".repeat(250));
        assert!(check(&long).is_err());
    }
}
