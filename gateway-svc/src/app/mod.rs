//! Wiring: everything `main` and the tests start.
//!
//! [`App::build`] here: every dependency connected, every listener bound.
//! What runs once built (the background tasks, the servers, the drain) is
//! in `run`.

use crate::{
    auth::{AuthLayer, GrpcReject, Validator},
    config::Config,
    follow::Follows,
    media::{MAX_CHUNK, Media},
    quota::Quotas,
    rest::{self, Edge},
    watch::Hub,
    webhooks::Webhooks,
};
use amqp_kit::{Publisher, broadcast::Broadcaster};
use media_store::{Jobs, Store};
use mp3converter_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    media::v1::{
        media_service_client::MediaServiceClient, media_service_server::MediaServiceServer,
    },
    upload::v1::upload_follow_service_server::UploadFollowServiceServer,
    webhooks::v1::{
        webhook_service_client::WebhookServiceClient, webhook_service_server::WebhookServiceServer,
    },
};
use std::{net::SocketAddr, time::Duration};
use svc_kit::{
    health::Health,
    observe::GrpcClientLayer,
    tls::{Connector, MeshTls},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::{LayerExt, Routes},
    transport::Endpoint,
};
use tower::Layer;

mod run;

const SERVICE_NAME: &str = "mp3converter.media.v1.MediaService";
const WEBHOOK_SERVICE_NAME: &str = "mp3converter.webhooks.v1.WebhookService";

/// The streams: no deadline (uploads and downloads of any size, watchers);
/// their idle request bodies and the connection limits bound them instead.
const STREAMING: &[&str] = &[
    "/mp3converter.media.v1.MediaService/Upload",
    "/mp3converter.media.v1.MediaService/AppendUpload",
    "/mp3converter.media.v1.MediaService/Download",
    "/mp3converter.media.v1.MediaService/WatchJobs",
    "/mp3converter.upload.v1.UploadFollowService/FollowUpload",
];

pub struct App {
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    admin_listener: TcpListener,
    /// The internal listener converters follow uploads on.
    follow_listener: TcpListener,
    routes: Routes,
    follow_routes: Routes,
    rest: axum::Router,
    health: Health,
    store: Store,
    jobs: Jobs,
    publisher: Publisher,
    media: Media,
    tls: Option<MeshTls>,
    edge_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Stops the certificate reloaders.
    background: CancellationToken,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc_addr", &self.grpc_listener.local_addr().ok())
            .field("http_addr", &self.http_listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First: a half-configured TLS refuses to start before anything else.
        let tls = config.tls.load()?;
        match (&tls, config.auth_url.starts_with("https://")) {
            (Some(_), false) => anyhow::bail!("TLS_MODE=mtls needs AUTH_URL=https://…"),
            (None, true) => anyhow::bail!("AUTH_URL is https://: set TLS_MODE=mtls and its files"),
            _ => {}
        }
        let background = CancellationToken::new();
        let edge_tls = match (&config.http_tls_cert_file, &config.http_tls_key_file) {
            (Some(cert), Some(key)) => Some(svc_kit::tls::edge_server_config(
                cert,
                key,
                config.tls.tls_reload_interval,
                background.clone(),
            )?),
            _ => None,
        };
        let store = Store::new(
            &config.mongodb_uri,
            &config.mongodb_database,
            "gateway-svc",
            media_store::Timeouts::default(),
        )
        .await?;
        store.ensure_indexes().await?;
        let jobs = Jobs::connect(
            &config.jobs_db,
            "gateway-svc",
            media_store::Routes {
                video_queue: config.video_queue.clone(),
                mp3_queue: config.mp3_queue.clone(),
                webhook_queue: config.webhook_queue.clone(),
                delete_sources: config.janitor.delete_source,
            },
        )
        .await?;

        let live_queue = config.live_conversion.then(|| {
            config
                .live_queue
                .clone()
                .unwrap_or_else(|| format!("{}.live", config.video_queue))
        });
        let mut queues = vec![
            config.video_topology.work_queue(&config.video_queue),
            config.video_topology.work_queue(&config.mp3_queue),
            config.video_topology.outlet(&config.webhook_queue),
        ];
        queues.extend(
            live_queue
                .as_deref()
                .map(|q| config.video_topology.hint_queue(q)),
        );
        let publisher = Publisher::with_topology(
            config.amqp_url.clone(),
            "gateway-svc",
            config.publish_timeout,
            queues,
        );

        let auth_endpoint = Endpoint::from_shared(config.auth_url.clone())?
            .connect_timeout(config.auth_timeout)
            .timeout(config.auth_timeout);
        let auth_channel = match &tls {
            Some(tls) => auth_endpoint.connect_with_connector_lazy(Connector::new(tls, None)?),
            None => auth_endpoint.connect_lazy(),
        };
        let validator = Validator::new(
            auth_channel.clone(),
            config.auth_timeout,
            config.auth_cache_ttl,
            config.auth_cache_size,
        );

        let (health, health_server) = Health::new(&["mongodb", "postgresql", "rabbitmq"]).await;
        let follow_listener = svc_kit::grpc::bind(config.follow_addr).await?;
        let follows = Follows::new(
            usize::try_from(config.follow_window).unwrap_or(usize::MAX),
            usize::try_from(config.follow_memory).unwrap_or(usize::MAX),
            Some(match &config.follow_url {
                Some(url) => url.clone(),
                None => format!(
                    "{}://{}",
                    if tls.is_some() { "https" } else { "http" },
                    loopback(follow_listener.local_addr()?)
                ),
            }),
        );
        let follow_routes = Routes::new(UploadFollowServiceServer::new(follows.clone()));
        health.track_service(SERVICE_NAME).await;
        health.track_service(WEBHOOK_SERVICE_NAME).await;

        let media = Media {
            store: store.clone(),
            jobs: jobs.clone(),
            publisher: publisher.clone(),
            job_events: Broadcaster::start(
                config.amqp_url.clone(),
                "gateway-svc-events",
                config.job_events_exchange.clone(),
            ),
            hub: Hub::default(),
            live_queue,
            follows,
            max_upload: config.max_upload_size,
            quotas: Quotas {
                limits: media_store::Quotas {
                    max_uploads: config.max_uploads_per_user,
                    max_waiting: config.max_waiting_jobs_per_user,
                    max_stored: config.max_stored_per_user,
                },
            },
            download_stall: config.download_stall_timeout,
            max_watchers_per_user: config.max_watchers_per_user,
            uploads: TaskTracker::new(),
            abort_uploads: CancellationToken::new(),
            resumable: crate::media::Resumable {
                expires_in: config.upload_expires,
                writer_lease: config.upload_writer_lease,
            },
            parked: crate::media::Parked::default(),
            validator: validator.clone(),
            // A token revoked elsewhere stops working within the cache's
            // lifetime; a stream's check follows the same clock.
            stream_recheck: if config.auth_cache_ttl.is_zero() {
                Duration::from_secs(5)
            } else {
                config.auth_cache_ttl
            },
        };
        // Health and reflection stay outside the auth layer: probes and
        // grpcurl `list` carry no token.
        let media_server = MediaServiceServer::new(media.clone())
            .max_decoding_message_size(MAX_CHUNK + (64 << 10));
        let webhook_server = WebhookServiceServer::new(Webhooks {
            jobs: jobs.clone(),
            egress: config.webhook_egress.clone(),
            max_per_user: config.max_webhooks_per_user,
        });
        let authenticated = AuthLayer::new(validator.clone(), GrpcReject);
        let routes = Routes::new(health_server)
            .add_service(authenticated.clone().named_layer(media_server))
            .add_service(authenticated.named_layer(webhook_server));
        let routes = svc_kit::grpc::with_reflection(
            routes,
            &[mp3converter_proto::FILE_DESCRIPTOR_SET],
            &[SERVICE_NAME, WEBHOOK_SERVICE_NAME],
        )?;

        let grpc_listener = svc_kit::grpc::bind(config.grpc_addr).await?;
        let http_listener = svc_kit::grpc::bind(config.http_addr).await?;
        let admin_listener = svc_kit::grpc::bind(config.admin_addr).await?;

        // The REST edge calls our own gRPC API in this process, through the
        // same layers as a call over the network (auth, limits, spans), with
        // no socket in between.
        let own = GrpcClientLayer.layer(svc_kit::grpc::in_process(
            routes.clone(),
            &config.listener,
            STREAMING,
        ));
        let edge = Edge {
            media: MediaServiceClient::new(own.clone()),
            webhooks: WebhookServiceClient::new(own),
            auth: AuthServiceClient::new(GrpcClientLayer.layer(auth_channel)),
            health: health.clone(),
            limits: rest::Limits::from(&config),
            validator,
            client_ip_header: config
                .client_ip_header
                .as_deref()
                .map(http::HeaderName::try_from)
                .transpose()
                .map_err(|e| anyhow::anyhow!("CLIENT_IP_HEADER: {e}"))?,
        };
        let rest = rest::router(edge);

        tracing::info!(
            grpc = %grpc_listener.local_addr()?,
            http = %http_listener.local_addr()?,
            admin = %admin_listener.local_addr()?,
            "gateway-svc listening"
        );
        Ok(Self {
            config,
            grpc_listener,
            http_listener,
            admin_listener,
            follow_listener,
            routes,
            follow_routes,
            rest,
            health,
            store,
            jobs,
            publisher,
            media,
            tls,
            edge_tls,
            background,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.config.http_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }
}

/// 0.0.0.0 or [::] are fine to listen on but not to connect to.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    }
}
