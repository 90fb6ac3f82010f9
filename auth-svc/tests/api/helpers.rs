use auth_svc::{app::App, config::Cli};
use clap::Parser;
use mp3converter_proto::auth::v1::{
    ChangePasswordRequest, ChangePasswordResponse, CreateUserRequest, LoginRequest, LoginResponse,
    LogoutRequest, SetUserDisabledRequest, User, ValidateRequest, ValidateResponse,
    auth_service_client::AuthServiceClient, set_user_disabled_request,
};
use std::net::{IpAddr, SocketAddr};
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
/// the first admin seeded, login rate limits off (the tests that test them
/// turn them on). Extra flags override these.
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
        "--login-limit-per-addr",
        "off",
        "--login-limit-per-account",
        "off",
        "--login-limit-per-account-addr",
        "off",
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

/// `req` with `authorization: Bearer <token>` if a token is given.
pub fn with_bearer<T>(msg: T, bearer: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

impl TestApp {
    /// A client whose connections come from `source` (any 127.x.y.z works on
    /// loopback), to be another client address.
    pub async fn client_from(&self, source: &str) -> AuthServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .local_address(Some(source.parse::<IpAddr>().unwrap()))
            .connect()
            .await
            .unwrap();
        AuthServiceClient::new(channel)
    }

    pub async fn validate(&self, token: &str) -> Result<ValidateResponse, Status> {
        self.client
            .clone()
            .validate(ValidateRequest {
                token: token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn logout(&self, bearer: Option<&str>) -> Result<(), Status> {
        self.client
            .clone()
            .logout(with_bearer(LogoutRequest {}, bearer))
            .await
            .map(drop)
    }

    pub async fn change_password(
        &self,
        bearer: &str,
        current: &str,
        new: &str,
    ) -> Result<ChangePasswordResponse, Status> {
        self.client
            .clone()
            .change_password(with_bearer(
                ChangePasswordRequest {
                    current_password: current.into(),
                    new_password: new.into(),
                },
                Some(bearer),
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// SetUserDisabled by email.
    pub async fn set_disabled(
        &self,
        bearer: &str,
        email: &str,
        disabled: bool,
    ) -> Result<User, Status> {
        self.set_disabled_by(
            bearer,
            set_user_disabled_request::User::Email(email.into()),
            disabled,
        )
        .await
    }

    pub async fn set_disabled_by(
        &self,
        bearer: &str,
        user: set_user_disabled_request::User,
        disabled: bool,
    ) -> Result<User, Status> {
        self.client
            .clone()
            .set_user_disabled(with_bearer(
                SetUserDisabledRequest {
                    user: Some(user),
                    disabled,
                },
                Some(bearer),
            ))
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    /// A plain connection to the test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

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
        let req = with_bearer(
            CreateUserRequest {
                email: email.into(),
                password: password.into(),
                admin,
            },
            bearer,
        );
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

/// The `google.rpc.RetryInfo` delay of a status, if it carries one.
pub fn retry_delay(status: &Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    status.get_error_details().retry_info()?.retry_delay
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
