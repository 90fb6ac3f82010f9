//! Users made as an admin makes them: the admin logs in to auth-svc over
//! gRPC, then `CreateUser` with its token (e2e, gateway-svc's tests and the
//! benches each did this themselves).

use anyhow::Context as _;
use mp3converter_proto::auth::v1::{
    CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use tonic::{Request, transport::Channel};

/// A user made by [`Admin::user`]: what they log in with, their id and a
/// token from logging in.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub password: String,
    pub id: String,
    pub token: String,
}

/// An admin logged in to auth-svc.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AuthServiceClient<Channel>,
    token: String,
}

impl Admin {
    /// Connects to auth-svc at `addr` (`host:port`, plain HTTP/2) and logs
    /// in as `(email, password)`.
    pub async fn connect(
        addr: impl std::fmt::Display,
        admin: (&str, &str),
    ) -> anyhow::Result<Self> {
        let client = AuthServiceClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connecting to auth-svc at {addr}"))?;
        Self::login_with(client, admin).await
    }

    /// Logs in as `(email, password)` over `channel` (e.g. mutual TLS with a
    /// certificate auth-svc accepts).
    pub async fn login(channel: Channel, admin: (&str, &str)) -> anyhow::Result<Self> {
        Self::login_with(AuthServiceClient::new(channel), admin).await
    }

    /// Logs in as `(email, password)` with `client`.
    pub async fn login_with(
        mut client: AuthServiceClient<Channel>,
        (email, password): (&str, &str),
    ) -> anyhow::Result<Self> {
        let token = login(&mut client, email, password)
            .await
            .context("the admin's login")?;
        Ok(Self { client, token })
    }

    /// An admin whose token was got some other way (a login with options of
    /// its own, such as a deadline).
    pub fn with_token(client: AuthServiceClient<Channel>, token: String) -> Self {
        Self { client, token }
    }

    /// The admin's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A client on the admin's connection.
    pub fn client(&self) -> AuthServiceClient<Channel> {
        self.client.clone()
    }

    /// `message` as a request carrying the admin's token.
    pub fn authorized<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("a token is ASCII"),
        );
        req
    }

    /// Creates a user (not an admin); their id.
    pub async fn create_user(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let created = self
            .client()
            .create_user(self.authorized(CreateUserRequest {
                email: email.to_owned(),
                password: password.to_owned(),
                admin: false,
            }))
            .await
            .with_context(|| format!("creating {email}"))?
            .into_inner();
        Ok(created.user.context("CreateUser answered no user")?.id)
    }

    /// Creates a user and logs them in.
    pub async fn user(&self, email: &str, password: &str) -> anyhow::Result<User> {
        let id = self.create_user(email, password).await?;
        let token = self.login_as(email, password).await?;
        Ok(User {
            email: email.to_owned(),
            password: password.to_owned(),
            id,
            token,
        })
    }

    /// Logs in as another user over the admin's connection; their token.
    pub async fn login_as(&self, email: &str, password: &str) -> anyhow::Result<String> {
        login(&mut self.client(), email, password)
            .await
            .with_context(|| format!("{email}'s login"))
    }
}

async fn login(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    Ok(client
        .login(LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .await?
        .into_inner()
        .token)
}
