//! A small client for Mailpit's HTTP API (`/api/v1/...`), which tests use to
//! read what a service actually sent over SMTP.

use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Mailpit {
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Address {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Summary {
    #[serde(rename = "ID")]
    pub id: String,
    pub subject: String,
    pub to: Vec<Address>,
    pub from: Option<Address>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Message {
    #[serde(rename = "ID")]
    pub id: String,
    pub subject: String,
    pub to: Vec<Address>,
    pub text: String,
    #[serde(rename = "HTML")]
    pub html: String,
}

#[derive(Debug, Deserialize)]
struct Search {
    messages: Vec<Summary>,
}

impl Mailpit {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Messages addressed to `to`, newest first.
    pub async fn messages_to(&self, to: &str) -> anyhow::Result<Vec<Summary>> {
        let res: Search = self
            .http
            .get(format!("{}/api/v1/search", self.base))
            .query(&[("query", format!("to:\"{to}\"")), ("limit", "200".into())])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(res
            .messages
            .into_iter()
            .filter(|m| m.to.iter().any(|a| a.address.eq_ignore_ascii_case(to)))
            .collect())
    }

    /// One whole message, with its text and HTML bodies.
    pub async fn message(&self, id: &str) -> anyhow::Result<Message> {
        Ok(self
            .http
            .get(format!("{}/api/v1/message/{id}", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
