//! Wires the gateway together: binds every listener first, then serves, and
//! owns the shutdown order.
//!
//! [`Server::bind`] returns only once every socket is bound, with the real
//! addresses (so tests bind port 0). Shutdown: stop accepting, let each
//! connection say goodbye (MQTT 5 DISCONNECT 0x8B), wait for the tasks
//! within a grace period, then flush and close the store.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::versions::Versions;
use crate::policy::{self, PolicyStore, compile::ArnHead};
use crate::registry::ClientIdentity;
use crate::registry::{CertStatus, Registry};
use crate::router::{MailboxLimits, Router};
use crate::rules::engine::{Engine, EngineError, Gateway};
use crate::session::Sessions;
use crate::session::conn::{self, Bulletin, Shared};
use crate::session::state::rate::Table;
use crate::spool::{self, Spool};
use crate::store::{Store, StoreError};
use crate::transport::pki::{self, FirstRun, PkiError};
use crate::transport::tls::{self, Acceptor, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod listen;

/// Device HTTPS connections handshaken and not yet taken by the server.
const HANDSHAKEN: usize = 64;

/// How long shutdown waits for connections to finish.
const GRACE: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// First-run certificate generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rules engine could not start (a broken rule, an unreadable CA).
    #[error(transparent)]
    Rules(#[from] EngineError),
    /// The upstream bridge could not start (its certificates).
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    /// A provisioning template could not be read or is not valid.
    #[error(transparent)]
    Template(#[from] crate::provisioning::catalog::FileError),
    /// The client for pre-provisioning hooks and custom authorizers could
    /// not be made (`actions.http_ca`).
    #[error("pre-provisioning hooks and custom authorizers: {0}")]
    HookClient(String),
    /// A custom authorizer cannot serve (its endpoint, its keys).
    #[error("{0}")]
    Authorizer(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The gateway, bound and serving.
#[derive(Debug)]
pub struct Server {
    /// Bound MQTT over TLS listeners, in configuration order.
    pub mqtt: Vec<SocketAddr>,
    /// Bound plaintext listener, if configured.
    pub plaintext: Option<SocketAddr>,
    /// Bound device HTTPS listener, if configured.
    pub https: Option<SocketAddr>,
    /// Bound `[[listeners]]`, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// Bound admin listener, if configured.
    pub admin: Option<SocketAddr>,
    /// Certificates created on this start (first run), if any.
    pub first_run: Option<FirstRun>,
    /// Metrics of this gateway.
    pub metrics: Arc<Metrics>,
    /// Swappable TLS configuration.
    pub acceptor: Arc<Acceptor>,
    /// Certificates and things.
    pub registry: Arc<Registry>,
    /// The policies in force.
    pub policies: Arc<PolicyStore>,
    policies_dir: std::path::PathBuf,
    _watches: Vec<policy::watch::Watch>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    store: Store,
}

impl Server {
    /// Prepares state, binds every listener, and starts serving.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir)
            .and_then(|()| owner_only(&config.data_dir))
            .map_err(|source| ServerError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        let first_run = if config.tls.generate_if_missing {
            pki::ensure_first_run(
                &config.data_dir.join("certs"),
                &config.tls.ca,
                &config.tls.cert,
                &config.tls.key,
            )?
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        let (store, mut snapshot) = Store::open(
            &config.data_dir.join("edgegate.redb"),
            config.store.fsync,
            metrics.clone(),
        )?;
        let router = Arc::new(Router::new(
            store.clone(),
            metrics.clone(),
            crate::router::retained::Quota {
                messages: config.limits.max_retained_messages,
                bytes: config.limits.max_retained_bytes,
                messages_per_owner: config.limits.max_retained_messages_per_principal,
                bytes_per_owner: config.limits.max_retained_bytes_per_principal,
            },
        ));
        let loaded = policy::load_dir(&config.policies.dir);
        for e in &loaded.errors {
            metrics.reload_failures.increment(1);
            tracing::error!(problem = %e, "policy not loaded");
        }
        let policies = Arc::new(PolicyStore::new(loaded.documents));
        let versions = Arc::new(Versions::new(
            &config.policies.dir,
            store.clone(),
            &snapshot.registry,
        ));
        let book = Arc::new(crate::rules::book::Book::new(
            &config,
            store.clone(),
            &snapshot.registry,
        ));
        let catalog = Arc::new(crate::provisioning::catalog::Catalog::load(
            &config,
            store.clone(),
            &snapshot.registry,
            crate::store::now_ms(),
        )?);
        // Pre-provisioning hooks and custom authorizers: endpoints that
        // stand in for Lambda functions, trusted as HTTP actions are.
        let lambdas = crate::rules::actions::http::client(config.actions.http_ca.as_deref())
            .map_err(ServerError::HookClient)?;
        let authorizers = Arc::new(
            crate::authorizers::Authorizers::load(
                &config,
                (Some(store.clone()), &snapshot.registry),
                lambdas.clone(),
                metrics.clone(),
            )
            .map_err(ServerError::Authorizer)?,
        );
        let job_records = crate::jobs::service::records(&snapshot.registry);
        let registry = Arc::new(Registry::new(
            store.clone(),
            std::mem::take(&mut snapshot.registry),
            crate::registry::read_ca_file(&config.tls.ca),
            config.auth.registration != crate::config::Registration::Registry,
        ));
        if let Some(first) = &first_run {
            register_first_run(&registry, &config, first);
        }
        let acceptor = Arc::new(Acceptor::new(tls_configs(&config.tls, &registry)?));
        let mut watches = Vec::new();
        {
            let (store, versions, metrics, dir) = (
                policies.clone(),
                versions.clone(),
                metrics.clone(),
                config.policies.dir.clone(),
            );
            watch_dir(&config.policies.dir, None, &mut watches, move || {
                reload_policies(&store, &metrics, &dir);
                versions.sync();
            });
        }
        let operators = Arc::new(crate::http::operators::Operators::from_config(&config));
        if config.admin.policies_dir.is_dir() {
            let (store, metrics, dir) = (
                operators.policies.clone(),
                metrics.clone(),
                config.admin.policies_dir.clone(),
            );
            watch_dir(&config.admin.policies_dir, None, &mut watches, move || {
                reload_policies(&store, &metrics, &dir);
            });
        }
        // Certificate files: a rotated server certificate or CA applies to new
        // connections; live ones keep the configuration they started with.
        let tls_dirs: std::collections::BTreeSet<std::path::PathBuf> =
            [&config.tls.ca, &config.tls.cert, &config.tls.key]
                .into_iter()
                .chain(&config.tls.crl)
                .filter_map(|p| p.parent().map(std::path::Path::to_path_buf))
                .collect();
        let retrust = {
            let (acceptor, metrics, tls, registry) = (
                acceptor.clone(),
                metrics.clone(),
                config.tls.clone(),
                registry.clone(),
            );
            Arc::new(move || match tls_configs(&tls, &registry) {
                Ok(configs) => {
                    acceptor.swap(configs);
                    tracing::info!("TLS trust reloaded");
                }
                Err(e) => {
                    metrics.reload_failures.increment(1);
                    tracing::error!(error = %e, "TLS reload failed; the previous certificates stay");
                }
            })
        };
        for dir in tls_dirs {
            let (retrust, registry, ca, auto) = (
                retrust.clone(),
                registry.clone(),
                config.tls.ca.clone(),
                config.auth.registration != crate::config::Registration::Registry,
            );
            watch_dir(&dir, None, &mut watches, move || {
                registry.configure_cas(crate::registry::read_ca_file(&ca), auto);
                retrust();
            });
        }
        let limits = MailboxLimits {
            queued: config.limits.max_queued_messages,
            stored: config.limits.max_stored_messages,
        };
        let sessions = Arc::new(Sessions::new(
            router.clone(),
            store.clone(),
            metrics.clone(),
            limits,
        ));
        let spools = std::mem::take(&mut snapshot.spools);
        let shadows = std::mem::take(&mut snapshot.shadows);
        sessions.restore(snapshot);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // A CA registered, activated, deactivated or deleted through the
        // control plane changes who may connect, without a restart.
        tracker.spawn({
            let (mut trust, token) = (registry.subscribe_trust(), shutdown.clone());
            async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        changed = trust.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            retrust();
                        }
                    }
                }
            }
        });
        let mut spools = spool::by_name(spools);
        let upstream = config.upstream.as_ref().map(|u| {
            Arc::new(Spool::new(
                spool::UPSTREAM,
                store.clone(),
                spool::Limits::of_upstream(u),
                spools.remove(spool::UPSTREAM).unwrap_or_default(),
            ))
        });
        let engine = Engine::start(
            &config,
            &book.in_force(),
            Gateway {
                router: router.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            },
            spools,
            upstream.clone(),
        )?;
        let shadows = crate::shadow::service::start(
            router.clone(),
            store.clone(),
            metrics.clone(),
            crate::shadow::service::Settings {
                limits: crate::shadow::document::Limits {
                    max_state_bytes: config.limits.shadow_max_bytes,
                    max_depth: config.limits.shadow_max_depth,
                },
                max_named_per_thing: config.limits.max_named_shadows_per_thing,
                max_shadows: config.limits.max_shadows,
            },
            shadows,
            shutdown.clone(),
            &tracker,
        );
        let audit = crate::audit::Audit::start(
            &config.data_dir,
            config.admin.audit_max_bytes,
            config.admin.audit_max_files,
            metrics.clone(),
        )
        .map_err(|e| tracing::error!(error = %e, "the audit log cannot be written"))
        .ok();
        let jobs = crate::jobs::service::start(
            router.clone(),
            crate::jobs::service::Parts {
                registry: registry.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                head: ArnHead::new(&config.aws.region, &config.aws.account_id),
            },
            job_records,
            shutdown.clone(),
            &tracker,
        );
        let enforce: crate::policy::Enforce = {
            let (store, metrics, dir) = (
                policies.clone(),
                metrics.clone(),
                config.policies.dir.clone(),
            );
            Arc::new(move || {
                reload_policies(&store, &metrics, &dir);
            })
        };
        crate::provisioning::service::start(
            router.clone(),
            registry.clone(),
            store.clone(),
            metrics.clone(),
            crate::provisioning::service::Settings {
                ca_dir: ca_dir(&config),
                catalog: catalog.clone(),
                head: ArnHead::new(&config.aws.region, &config.aws.account_id),
                http: lambdas,
                audit: audit.clone(),
                policies: versions.clone(),
                enforce: enforce.clone(),
            },
            shutdown.clone(),
            &tracker,
        );
        let bridge = match (&config.upstream, upstream) {
            (Some(u), Some(spool)) => Some(crate::bridge::start(
                u,
                router.clone(),
                spool,
                metrics.clone(),
                shutdown.clone(),
                &tracker,
            )?),
            _ => None,
        };
        book.attach(engine.clone());
        if let Some(file) = &config.source {
            let (book, catalog, metrics, file) =
                (book.clone(), catalog.clone(), metrics.clone(), file.clone());
            let dir = file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_owned();
            let name = file.file_name().map(std::ffi::OsStr::to_owned);
            watch_dir(&dir, name, &mut watches, move || {
                reload_config(&book, &catalog, &metrics, &file);
            });
        }
        let data = crate::http::data::DataPlane {
            shadows,
            router: router.clone(),
            topic_limits: config.limits.topics(),
            max_payload: config.limits.max_payload_bytes,
        };
        let events = crate::events::Events::start(
            router.clone(),
            crate::events::Sources {
                registry: registry.clone(),
                policies: versions.clone(),
            },
            metrics.clone(),
            config.events,
            ArnHead::new(&config.aws.region, &config.aws.account_id),
            shutdown.clone(),
            &tracker,
        );
        let shared = Arc::new(Shared {
            config: config.clone(),
            router,
            sessions,
            store: store.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            next_conn: AtomicU64::new(1),
            registry: registry.clone(),
            policies: policies.clone(),
            arn_head: ArnHead::new(&config.aws.region, &config.aws.account_id),
            bulletin: Bulletin::default(),
            connects: parking_lot::Mutex::new(Table::new(conn::RATE_KEYS)),
            arrivals: parking_lot::Mutex::new(Table::new(conn::RATE_KEYS)),
            events,
            authorizers: authorizers.clone(),
        });
        tracker.spawn({
            let (shared, policies, registry) =
                (shared.clone(), policies.subscribe(), registry.subscribe());
            async move {
                let token = shared.shutdown.clone();
                shared.bulletin.relay(policies, registry, token).await;
            }
        });

        // Bind everything before serving anything.
        let mut tls_listeners = Vec::new();
        for addr in &config.mqtt.listen {
            tls_listeners.push(bind(addr).await?);
        }
        let plaintext_listener = match &config.mqtt.plaintext_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin = match &config.admin.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mqtt = tls_listeners
            .iter()
            .map(local)
            .collect::<Result<Vec<_>, _>>()?;
        // The HTTPS listener is a TLS listener like the others (see `listen`).
        let https = match &config.https.listen {
            Some(addr) => {
                let l = bind(addr).await?;
                let addr = local(&l)?;
                tls_listeners.push(l);
                Some(addr)
            }
            None => None,
        };
        let mut listeners = Vec::new();
        let mut configured = Vec::new();
        for l in &config.listeners {
            let bound = bind(&l.listen).await?;
            listeners.push(local(&bound)?);
            configured.push((bound, l.client_cert, proxies(l)));
        }
        let plaintext = plaintext_listener.as_ref().map(local).transpose()?;

        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        // Every TLS listener may hand a connection to the device HTTPS
        // endpoint (see `listen`), so its server runs whatever is configured.
        let (handed, rx) = tokio::sync::mpsc::channel(HANDSHAKEN);
        {
            let device = Arc::new(crate::http::device::Device {
                data: data.clone(),
                jobs: jobs.clone(),
                shared: shared.clone(),
            });
            let app = crate::http::device::router(device)
                .into_make_service_with_connect_info::<crate::http::device::Peer>();
            let local = https.or(mqtt.first().copied());
            let local = local.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            let listener = crate::http::device::Handshaken::new(rx, local);
            spawn_served(
                &tracker,
                "device HTTPS endpoint",
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned()),
            );
        }
        let routes = listen::Routes {
            shared: shared.clone(),
            https: handed,
            operators: operators.clone(),
        };
        let required = tls_listeners
            .into_iter()
            .map(|l| (l, crate::config::ClientCert::Required, None));
        for (l, client_cert, proxies) in required.chain(configured) {
            tracker.spawn(listen::tls_listener(
                l,
                (acceptor.clone(), client_cert),
                routes.clone(),
                (permits.clone(), proxies),
                tracker.clone(),
            ));
        }
        if let Some(l) = plaintext_listener {
            tracker.spawn(listen::plaintext_listener(
                l,
                routes.clone(),
                permits.clone(),
                tracker.clone(),
            ));
        }
        let control = Arc::new(crate::http::control::Control {
            rules: book,
            templates: catalog,
            jobs: Some(jobs),
            authorizers: Some(authorizers.clone()),
            registry: registry.clone(),
            policies: versions,
            head: ArnHead::new(&config.aws.region, &config.aws.account_id),
            endpoint: crate::http::control::Endpoint {
                host: endpoint_host(&config),
                mqtt_port: mqtt.first().map(SocketAddr::port),
                https_port: https.map(|a| a.port()),
            },
            data: Some(data),
            operators,
            audit,
            metrics: metrics.clone(),
            store: store.clone(),
            enforce: Some(enforce),
            ca_dir: ca_dir(&config),
        });
        let admin_state = crate::http::admin::AdminState::new(
            metrics.clone(),
            bridge,
            control,
            config.limits.max_payload_bytes,
        );
        if config.admin.socket {
            let path = config.data_dir.join(ADMIN_SOCKET);
            let listener = bind_socket(&path)?;
            let app = crate::http::admin::local_router(admin_state.clone());
            spawn_served(
                &tracker,
                "admin socket",
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned()),
            );
            tracing::info!(path = %path.display(), "admin socket listening");
        }
        let admin = match admin {
            Some(l) => {
                let addr = local(&l)?;
                let app = crate::http::admin::router(admin_state)
                    .into_make_service_with_connect_info::<SocketAddr>();
                spawn_served(
                    &tracker,
                    "admin listener",
                    axum::serve(l, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()),
                );
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            mqtt,
            plaintext,
            https,
            listeners,
            admin,
            first_run,
            metrics,
            acceptor,
            registry,
            policies,
            policies_dir: config.policies.dir.clone(),
            _watches: watches,
            shutdown,
            tracker,
            store,
        })
    }

    /// Re-reads the policies directory; files that fail keep their last good
    /// version. Connections re-check themselves against the new generation.
    pub fn reload_policies(&self) -> Vec<policy::FileError> {
        reload_policies(&self.policies, &self.metrics, &self.policies_dir)
    }

    /// A token that is cancelled when the gateway shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, ends every connection, and closes the store.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        self.store.close().await;
    }
}

/// Runs an HTTP server until shutdown; its failure is logged as `what`'s.
fn spawn_served<F>(tracker: &TaskTracker, what: &'static str, served: F)
where
    F: std::future::IntoFuture<Output = std::io::Result<()>>,
    F::IntoFuture: Send + 'static,
{
    let served = served.into_future();
    tracker.spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}

/// The file name of the admin socket in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Makes the data directory the gateway's alone: every file the gateway
/// creates from now on is owner-only (umask 077), and what is already in
/// the directory becomes so too (directories 0700, files 0600), whatever
/// an earlier version or a copy left. Symbolic links are not followed.
fn owner_only(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.metadata()?.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Binds the admin socket, owner-only. A socket left by a gateway that
/// died is replaced: the store's lock, taken earlier, proves none runs.
fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServerError> {
    let error = |source| ServerError::Bind {
        addr: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}

/// The host devices reach this gateway by: the server certificate's common name.
fn endpoint_host(config: &Config) -> String {
    tls::read_certs(&config.tls.cert)
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .and_then(|der| ClientIdentity::from_der(&der))
        .and_then(|id| id.subject.common_name)
        .unwrap_or_else(|| "localhost".into())
}

/// The proxies a listener trusts to send a PROXY header, if it reads one.
fn proxies(l: &crate::config::Listener) -> Option<Arc<[crate::config::Cidr]>> {
    l.proxy_protocol.then(|| l.trusted().into())
}

/// The TLS configurations of the listeners, trusting the configured and
/// the registered CAs; the registry takes the revocation lists at the same
/// time, so that live connections of listed certificates close when a list
/// changes.
fn tls_configs(tls: &crate::config::Tls, registry: &Registry) -> Result<tls::Configs, TlsError> {
    let registered = registry.registered_roots();
    registry.apply_revocation_lists(&tls::Revoked::read(tls.crl.as_deref())?);
    tls::Configs::build(tls, &registered)
}

/// Watches `dir`, keeping the watch in `watches`; a directory that cannot be
/// watched is logged, and changes there then need a restart.
fn watch_dir(
    dir: &std::path::Path,
    only: Option<std::ffi::OsString>,
    watches: &mut Vec<policy::watch::Watch>,
    reload: impl Fn() + Send + 'static,
) {
    match policy::watch::watch(dir, only, reload) {
        Ok(w) => watches.push(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "not watched; changes need a restart")
        }
    }
}

fn reload_policies(
    store: &PolicyStore,
    metrics: &Metrics,
    dir: &std::path::Path,
) -> Vec<policy::FileError> {
    let errors = store.reload(dir);
    for e in &errors {
        metrics.reload_failures.increment(1);
        tracing::error!(problem = %e, "policy reload kept the last good version");
    }
    tracing::info!(generation = store.current().generation, "policies reloaded");
    errors
}

/// Re-reads `[[rules]]` from the configuration file and swaps them in if
/// they changed and compile; otherwise the running rules stay and every
/// problem is logged with file, rule and position. Other sections need a
/// restart.
/// Applies what of a changed `config.toml` applies live: its rules and its
/// provisioning templates, each whole or not at all.
fn reload_config(
    book: &crate::rules::book::Book,
    catalog: &crate::provisioning::catalog::Catalog,
    metrics: &Metrics,
    file: &std::path::Path,
) {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            metrics.reload_failures.increment(1);
            tracing::error!(error = %e, "configuration reload failed; the running rules and templates stay");
            return;
        }
    };
    match catalog.set_config(&config, crate::store::now_ms()) {
        Ok(false) => {}
        Ok(true) => tracing::info!(
            file = %file.display(),
            templates = config.provisioning.templates.len(),
            "provisioning templates reloaded"
        ),
        Err(e) => {
            metrics.reload_failures.increment(1);
            tracing::error!(file = %file.display(), error = %e, "provisioning templates reload failed; the running templates stay");
        }
    }
    if config.rules == book.config_rules() {
        return;
    }
    let count = config.rules.len();
    match book.set_config(config.rules) {
        Ok(()) => tracing::info!(file = %file.display(), rules = count, "rules reloaded"),
        Err(problems) => {
            metrics.reload_failures.increment(1);
            for p in problems {
                tracing::error!(file = %file.display(), problem = %p, "rules reload failed; the running rules stay");
            }
        }
    }
}

/// Registers the certificates made on first run: the device with the
/// provisioning template's policies and its thing, the operator with the
/// `operator` policy.
fn register_first_run(registry: &Registry, config: &Config, first: &FirstRun) {
    if let Some(id) = ClientIdentity::from_pem(&first.device) {
        registry.register(
            &id,
            CertStatus::Active,
            config.auth.provisioning.policies.clone(),
            Some(pki::FIRST_DEVICE),
        );
    }
    if let Some(id) = ClientIdentity::from_pem(&first.operator) {
        registry.register(&id, CertStatus::Active, vec!["operator".into()], None);
    }
}

async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

fn local(l: &TcpListener) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(|source| ServerError::Bind {
        addr: "listener".into(),
        source,
    })
}

/// Where the CA's certificate and key are, to issue certificates with.
fn ca_dir(config: &Config) -> std::path::PathBuf {
    config.tls.ca.parent().map_or_else(
        || std::path::PathBuf::from("."),
        std::path::Path::to_path_buf,
    )
}
