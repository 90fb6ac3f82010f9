use auth_svc::{app::App, config::Cli};
use clap::Parser;
use mp3converter_proto::auth::v1::{
    CreateUserRequest, LoginRequest, LoginResponse, auth_service_client::AuthServiceClient,
};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, transport::Channel};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin password 1";

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub client: AuthServiceClient<Channel>,
    pub db_url: String,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Settings for a test app: port 0, the given database, a known secret and
/// the first admin seeded. Extra flags override these.
pub fn cli(db_url: &str, extra: &[&str]) -> Cli {
    let mut args = vec![
        "auth-svc",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--database-url",
        db_url,
        "--jwt-secret",
        SECRET,
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
        "--db-health-interval",
        "200ms",
        "--db-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args).expect("test config parses")
}

pub async fn spawn_app() -> TestApp {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    spawn_app_on(&db_url, &[]).await
}

pub async fn spawn_app_on(db_url: &str, extra: &[&str]) -> TestApp {
    test_kit::init_tracing();
    let app = App::build(cli(db_url, extra).config)
        .await
        .expect("app builds");
    let addr = app.grpc_addr();
    let admin_addr = app.admin_addr();
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run_until(token.clone()));
    let client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to auth-svc");
    TestApp {
        addr,
        admin_addr,
        client,
        db_url: db_url.to_owned(),
        token,
        handle,
    }
}

impl TestApp {
    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse, Status> {
        self.client
            .clone()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap().token
    }

    pub async fn create_user(
        &self,
        bearer: Option<&str>,
        email: &str,
        password: &str,
        admin: bool,
    ) -> Result<mp3converter_proto::auth::v1::User, Status> {
        let mut req = Request::new(CreateUserRequest {
            email: email.into(),
            password: password.into(),
            admin,
        });
        if let Some(t) = bearer {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        self.client
            .clone()
            .create_user(req)
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    /// A new non-admin user; returns its email.
    pub async fn new_user(&self, password: &str) -> String {
        let email = format!("{}@example.com", test_kit::unique_name("user"));
        let admin = self.admin_token().await;
        self.create_user(Some(&admin), &email, password, false)
            .await
            .unwrap();
        email
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

pub fn assert_code(res: Result<impl std::fmt::Debug, Status>, code: Code) -> Status {
    match res {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}

pub fn reason(status: &Status) -> Option<String> {
    svc_kit::error::status_reason(status)
}
