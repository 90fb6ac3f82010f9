//! Input parsed into types that can only hold valid values.

use std::fmt;

/// A normalised (trimmed, lower-case) email address.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Email(String);

pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
pub(crate) const MIN_NEW_PASSWORD_CHARS: usize = 8;

impl Email {
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("is empty".into());
        }
        // The one grammar notify-svc mails to: an account must be one its
        // owner can be told about.
        svc_kit::email::check(&email)?;
        Ok(Self(email))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as given; never printed.
#[derive(Clone)]
pub(crate) struct Password(String);

impl Password {
    /// A password offered at login: only its size is checked.
    pub(crate) fn for_login(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is empty".into());
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(format!("is longer than {MAX_PASSWORD_BYTES} bytes"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A new user's password: also long enough.
    pub(crate) fn new_user(raw: &str) -> Result<Self, String> {
        let p = Self::for_login(raw)?;
        if raw.chars().count() < MIN_NEW_PASSWORD_CHARS {
            return Err(format!(
                "must be at least {MIN_NEW_PASSWORD_CHARS} characters long"
            ));
        }
        Ok(p)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn bad_emails_are_refused() {
        for bad in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "alice@@example.com",
            "al ice@example.com",
            "alice@.example.com",
            "alice@example..com",
            "a\u{0}b@example.com",
            "x'$(id)'@example.com",
            "probe-\"q\"@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn passwords_are_bounded_and_redacted() {
        assert!(Password::for_login("").is_err());
        assert!(Password::for_login(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(Password::new_user("short").is_err());
        let p = Password::new_user("long enough").unwrap();
        assert_eq!(format!("{p:?}"), "[redacted]");
    }
}
