//! Chaos: the three roles as separate processes (`flywheel source`, `gateway`,
//! `processors`) under load — ERP stock moves and price changes, shop orders,
//! ERP shipments of those orders — and repeated `kill -9` of a random role at
//! random moments, each role several times, each restarted after a random
//! pause. Afterwards the whole system must converge: every stock level and
//! price in the shop equals the ERP's, every shop order is in the ERP exactly
//! once with its lines, every ERP shipment is fulfilled in the shop, nothing
//! is dead-lettered, and the shop's record of every quantity set holds no ERP
//! value applied out of order. It prints its figures: kills, the time each
//! restarted role took to be working again, the time to converge.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, erp_list_prices, shop_on_hand, shop_prices};
use flywheel::erp::demo_erp::{DemoSize, ErpActivity};
use flywheel::local_infra::free_port;
use shopsim::Topic;

const SKUS: u32 = 30;
const KILLS_PER_ROLE: usize = 3;
/// After `kill -9` and a restart, a role must be working again within this
/// (the issue's bound). The killed processors' partition leases end with their
/// state-database sessions, so the restarted worker takes them on its first
/// lease check (`sync::partition_leases`); no broker timeout is involved.
const RESUME_BOUND: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(180);
const SECRET: &str = "chaos-secret";
/// What the convergence check found last, for the timeout message.
static NOT_YET: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
/// (topic, key prefix) of what differed at the last check.
static OFF_KEYS: std::sync::Mutex<Vec<(&'static str, String)>> = std::sync::Mutex::new(Vec::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Source,
    Gateway,
    Processors,
}

impl Role {
    fn arg(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Gateway => "gateway",
            Role::Processors => "processors",
        }
    }
}

/// One role's process, its metrics port and its log file.
struct RoleProcess {
    role: Role,
    config: PathBuf,
    metrics_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl RoleProcess {
    fn new(role: Role, config: &Path, dir: &Path) -> RoleProcess {
        RoleProcess {
            role,
            config: config.to_owned(),
            metrics_port: free_port().expect("a free port"),
            log: dir.join(format!("{}.log", role.arg())),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the role's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("--config")
            .arg(&self.config)
            .arg(self.role.arg())
            .env(
                "FLYWHEEL_METRICS__LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning a role");
        self.child = Some(child);
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reaping the killed role");
        }
    }

    /// Panics with the log's tail if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "{} exited on its own ({status}):\n{}",
                self.role.arg(),
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Working: `/readyz` answers 200 (the source streams from its slot, the
    /// gateway reaches Kafka, every processor runs and is not stalled) and,
    /// for the processors, every processor holds partitions again.
    async fn working(&self) -> bool {
        let base = format!("http://127.0.0.1:{}", self.metrics_port);
        let ready = match reqwest::get(format!("{base}/readyz")).await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        };
        if !ready || self.role != Role::Processors {
            return ready;
        }
        let Ok(text) = reqwest::get(format!("{base}/metrics")).await else {
            return false;
        };
        let text = text.text().await.unwrap_or_default();
        // The default configuration's lanes: one shop, `demo`, as here.
        flywheel::sync::lanes(&flywheel::config::Config::default())
            .iter()
            .all(|lane| {
                text.lines().any(|l| {
                    l.starts_with(&format!(
                        "flywheel_processor_assigned_partitions{{entity=\"{}\",shop=\"{}\"}}",
                        lane.entity,
                        lane.shop_label()
                    )) && !l.ends_with(" 0")
                })
            })
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Awaits `cond`, or panics with `what` and every role's log tail.
async fn wait_working<F, Fut>(what: &str, timeout: Duration, roles: &[RoleProcess], mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            let mut logs = Vec::new();
            for r in roles {
                let metrics = match reqwest::get(format!(
                    "http://127.0.0.1:{}/metrics",
                    r.metrics_port
                ))
                .await
                {
                    Ok(m) => m.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                let processors: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        (l.starts_with("flywheel_processor_") || l.starts_with("flywheel_source_"))
                            && !l.contains("_bucket")
                    })
                    .collect();
                logs.push(format!(
                    "--- {} ---\n{}\n{}",
                    r.role.arg(),
                    r.log_tail(),
                    processors.join("\n")
                ));
            }
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}\n{}",
                NOT_YET.lock().unwrap(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_config(dir: &Path, env: &TestEnv, sim: &shopsim::ShopSim, gateway_port: u16) -> PathBuf {
    let c = &env.config;
    let text = format!(
        r#"
[erp]
dsn = "{dsn}"
slot = "{slot}"
status_interval_ms = 100
heartbeat_interval_ms = 500

[kafka]
bootstrap = "{bootstrap}"
fetch_wait_max_ms = {fetch_wait}
topic_prefix = "{prefix}"
partitions = 3
message_timeout_ms = 10000

[gateway]
listen = "127.0.0.1:{gateway_port}"
dedupe_path = "{dedupe}"

[[shops]]
name = "demo"
platform = "shopify"
webhook_secrets = ["{SECRET}"]
admin_url = "{graphql}"
access_token = "{token}"

[processors]
group_id = "chaos"
instance_id = "chaos-worker"
batch_wait_ms = 50
stall_timeout_secs = 8

[lifecycle]
shutdown_timeout_secs = 10
"#,
        dsn = c.erp.dsn,
        slot = c.erp.slot,
        bootstrap = c.kafka.bootstrap,
        fetch_wait = c.kafka.fetch_wait_max_ms,
        prefix = c.kafka.topic_prefix,
        dedupe = dir.join("seen.log").display(),
        graphql = sim.graphql_url(),
        token = sim.config.access_token,
    );
    let path = dir.join("flywheel.toml");
    std::fs::write(&path, text).expect("writing the configuration");
    path
}

// It once failed to converge about one run in six: a level left a shipment's
// units low (the stock write's idempotency key did not cover its values), and
// a shipment never fulfilled or a last price never published (the source read
// transactions before PostgreSQL made them visible, `erp::visibility`).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_any_role_under_load_delays_the_sync_and_never_breaks_it() {
    let size = DemoSize {
        skus: SKUS,
        warehouses: 3,
        orders: 0,
        seed: 0.2,
    };
    let env = TestEnv::new("chaos", size).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway_port = free_port().expect("a free port");
    let callback = format!("http://127.0.0.1:{gateway_port}/webhooks/shopify/demo");
    let sim = shopsim::ShopSim::start(
        shopsim::SimConfig {
            webhook_secret: SECRET.into(),
            seed: shopsim::catalog::demo_seed(SKUS, 3),
            subscriptions: [
                Topic::OrdersCreate,
                Topic::OrdersPaid,
                Topic::OrdersUpdated,
                Topic::OrdersCancelled,
            ]
            .iter()
            .map(|t| (*t, callback.clone()))
            .collect(),
            ..shopsim::SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the shop simulator starts");
    let config = write_config(dir.path(), &env, &sim, gateway_port);
    let mut roles: Vec<RoleProcess> = [Role::Source, Role::Gateway, Role::Processors]
        .into_iter()
        .map(|r| RoleProcess::new(r, &config, dir.path()))
        .collect();
    for r in &mut roles {
        r.start();
    }
    for i in 0..roles.len() {
        let what = format!("{} to be working", roles[i].role.arg());
        wait_working(&what, CONVERGE, &roles, || roles[i].working()).await;
    }

    // Load: ERP stock moves and price changes (~10/s), ERP shipments of shop
    // orders (~2/s), shop orders (~2/s, refused when a line is short).
    let stop = Arc::new(AtomicBool::new(false));
    let erp_load = {
        let (stop, erp) = (stop.clone(), common::connect(&env.dsn).await);
        tokio::spawn(async move {
            let mut activity = ErpActivity::new(size, 42);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = if n.is_multiple_of(3) {
                    activity.price_change(&erp).await
                } else {
                    activity.stock_move(&erp).await
                };
                r.expect("ERP activity");
                if n.is_multiple_of(5) {
                    activity.ship_shop_order(&erp).await.expect("shipping");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    sim.start_order_generator(2.0);

    // Each role killed KILLS_PER_ROLE times, in random order, at random moments.
    let mut plan: Vec<usize> = (0..roles.len())
        .flat_map(|i| std::iter::repeat_n(i, KILLS_PER_ROLE))
        .collect();
    fastrand::shuffle(&mut plan);
    let mut resumed: Vec<(Role, Duration)> = Vec::new();
    let mut slow: Vec<String> = Vec::new();
    for i in plan {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..4_000))).await;
        for r in &mut roles {
            r.assert_alive();
        }
        roles[i].kill_9();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(500..3_000))).await;
        roles[i].start();
        let started = Instant::now();
        let what = format!("{} to work again after kill -9", roles[i].role.arg());
        wait_working(&what, CONVERGE, &roles, || roles[i].working()).await;
        let took = started.elapsed();
        if took > RESUME_BOUND {
            slow.push(format!(
                "--- {} took {took:.1?} ---\n{}",
                roles[i].role.arg(),
                roles[i].log_tail()
            ));
        }
        resumed.push((roles[i].role, took));
    }
    stop.store(true, Ordering::Relaxed);
    sim.stop_order_generator();
    erp_load.await.expect("the ERP load");
    let load_stopped = Instant::now();

    // Convergence.
    let want_stock = || env.shop_should_show_all(SKUS, 0);
    let orders_match = || async {
        let shop: BTreeMap<String, usize> = sim
            .shop()
            .state
            .lock()
            .orders
            .values()
            .map(|o| (o.id.to_string(), o.line_items.len()))
            .collect();
        let erp: BTreeMap<String, usize> = env
            .erp
            .query(
                "SELECT o.shop_order_id, count(l.id) FROM sale_order o
                 LEFT JOIN sale_order_line l ON l.order_id = o.id
                 WHERE o.channel = 'demo' GROUP BY o.shop_order_id",
                &[],
            )
            .await
            .expect("reading ERP orders")
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as usize))
            .collect();
        shop == erp
    };
    let shipments_fulfilled = || async {
        let shipped: Vec<String> = env
            .erp
            .query(
                "SELECT o.shop_order_id FROM sale_order o
                 JOIN stock_picking p ON p.sale_id = o.id AND p.state = 'done'
                 WHERE o.channel = 'demo'",
                &[],
            )
            .await
            .expect("reading shipments")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let st = sim.shop().state.lock();
        shipped.iter().all(|id| {
            id.parse::<u64>()
                .ok()
                .and_then(|id| st.orders.get(&id))
                .is_some_and(|o| o.fulfillment_status.as_deref() == Some("fulfilled"))
        })
    };
    let converged = || async {
        let (on_hand, want) = (shop_on_hand(&sim).await, want_stock().await);
        let (prices, list) = (shop_prices(&sim).await, erp_list_prices(&env).await);
        let (orders, shipped) = (orders_match().await, shipments_fulfilled().await);
        let levels_off = want
            .iter()
            .filter(|(k, v)| on_hand.get(*k) != Some(*v))
            .count();
        *OFF_KEYS.lock().unwrap() = want
            .iter()
            .filter(|(k, v)| on_hand.get(*k) != Some(*v))
            .map(|((sku, wh), _)| ("erp.stock.v1", format!("{sku}/{wh}")))
            .chain(
                list.iter()
                    .filter(|(k, v)| prices.get(*k) != Some(*v))
                    .map(|(k, _)| ("erp.price.v1", format!("{k}/"))),
            )
            .collect();
        let prices_off: Vec<String> = list
            .iter()
            .filter(|(k, v)| prices.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: shop {:?}, ERP {v:?}", prices.get(k)))
            .collect();
        let levels: Vec<String> = want
            .iter()
            .filter(|(k, v)| on_hand.get(*k) != Some(*v))
            .take(5)
            .map(|(k, v)| format!("{k:?}: shop {:?}, ERP {v}", on_hand.get(k)))
            .collect();
        *NOT_YET.lock().unwrap() = format!(
            "not converged yet: {levels_off} of {} levels ({levels:?}) and {} of {} prices \
                 ({prices_off:?}) differ, orders match: {orders}, shipments fulfilled: {shipped}",
            want.len(),
            prices_off.len(),
            list.len()
        );
        let prices_off = prices_off.len();
        levels_off == 0
            && on_hand.len() == want.len()
            && prices_off == 0
            && prices.len() == list.len()
            && orders
            && shipped
    };
    let converge_deadline = Instant::now() + CONVERGE;
    while Instant::now() < converge_deadline {
        if converged().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !converged().await {
        eprintln!("POST-MORTEM\n{}", post_mortem(&env).await);
    }
    wait_working(
        "the shop and the ERP to converge",
        Duration::from_secs(1),
        &roles,
        converged,
    )
    .await;
    let converged_after = load_stopped.elapsed();
    for r in &mut roles {
        r.assert_alive();
    }

    // Nothing was dead-lettered.
    let mut dlq = env.reader("flywheel.dlq.v1");
    let letters = dlq.drain(Duration::from_secs(2)).await;
    assert!(
        letters.is_empty(),
        "dead letters: {:?}",
        letters.iter().map(|l| &l.headers).collect::<Vec<_>>()
    );

    // No value was applied out of order: per level, the shop's sets are the
    // ERP's successive targets in version order (a value may repeat: a
    // replay after a kill, or a double-counted shipment put back).
    let mut events: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
    let mut stock = env.reader("erp.stock.v1");
    for rec in stock.drain(Duration::from_secs(2)).await {
        events
            .entry(rec.key.clone())
            .or_default()
            .push((rec.version(), common::stock_target(rec, "demo")));
    }
    let (history, names) = {
        let st = sim.shop().state.lock();
        let mut names = HashMap::new();
        for v in st.variants.values() {
            for l in st.locations.values() {
                names.insert((v.inventory_item_id, l.id), format!("{}/{}", v.sku, l.name));
            }
        }
        (st.set_history.clone(), names)
    };
    let mut sets = 0;
    for (level, history) in &history {
        let key = &names[level];
        let mut seq = events.get(key).cloned().unwrap_or_default();
        seq.sort();
        seq.dedup();
        let targets: Vec<i64> = seq.iter().map(|(_, t)| *t).collect();
        let mut at: Option<usize> = None;
        for v in history {
            sets += 1;
            if at.is_some_and(|i| targets[i] == *v) {
                continue;
            }
            let from = at.map_or(0, |i| i + 1);
            match targets[from..].iter().position(|t| t == v) {
                Some(j) => at = Some(from + j),
                None => panic!(
                    "{key}: the shop was set to {v} out of ERP order\n sets {history:?}\n ERP targets {targets:?}"
                ),
            }
        }
    }

    let max = resumed.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "chaos: {} kills, {} sets checked, converged {converged_after:.1?} after the load stopped",
        resumed.len(),
        sets
    );
    for (role, d) in &resumed {
        println!("  kill -9 {:<10} working again after {d:.1?}", role.arg());
    }
    assert!(
        resumed.iter().all(|(_, d)| *d <= RESUME_BOUND),
        "a role took {max:?} to work again after kill -9 (bound {RESUME_BOUND:?}): {resumed:?}\n{}",
        slow.join("\n")
    );
    drop(roles);
}

/// For a convergence timeout: every record of the keys that differ (partition,
/// offset, version, value), what the processors recorded as applied, and the
/// groups' committed offsets.
async fn post_mortem(env: &TestEnv) -> String {
    let off = OFF_KEYS.lock().unwrap().clone();
    let mut out = String::new();
    for (topic, prefix) in off {
        let mut reader = env.reader(topic);
        for r in reader.drain(Duration::from_secs(2)).await {
            if r.key.starts_with(&prefix) || r.key == prefix.trim_end_matches('/') {
                out.push_str(&format!(
                    "{topic} p{} @{} {} v{} {:?}\n",
                    r.partition,
                    r.offset,
                    r.key,
                    r.version(),
                    r.value
                ));
            }
        }
        let applied = env
            .erp
            .query(
                "SELECT processor, key, version FROM flywheel.applied_versions WHERE key LIKE $1 || '%'",
                &[&prefix.trim_end_matches('/')],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| format!("{}:{}={}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2)))
                    .collect::<Vec<_>>()
            });
        out.push_str(&format!("applied {applied:?}\n"));
    }
    let mut dlq = env.reader("flywheel.dlq.v1");
    for r in dlq.drain(Duration::from_secs(2)).await {
        out.push_str(&format!("dead letter {}: {:?}\n", r.key, r.value));
    }
    let sessions = env
        .erp
        .query(
            "SELECT pid, backend_type, coalesce(application_name, ''), coalesce(state, ''),
                    coalesce(wait_event_type || ':' || wait_event, ''),
                    coalesce(left(query, 160), ''), coalesce((now() - xact_start)::text, '')
             FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    format!(
                        "{} {} [{}] {} wait={} xact_age={} q={}",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                        r.get::<_, String>(4),
                        r.get::<_, String>(6),
                        r.get::<_, String>(5)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
    out.push_str(&format!(
        "sessions:\n{}\n",
        sessions.unwrap_or_else(|e| e.to_string())
    ));
    let slots = env
        .erp
        .query(
            "SELECT slot_name, active::text, coalesce(active_pid::text, ''), confirmed_flush_lsn::text,
                    pg_current_wal_lsn()::text FROM pg_replication_slots",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (0..5).map(|i| r.get::<_, String>(i)).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
        });
    out.push_str(&format!("slots: {slots:?}\n"));
    let config = env.config.clone();
    let lags = tokio::task::spawn_blocking(move || flywheel::ops::lag::consumer_lag(&config))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for l in lags {
        out.push_str(&format!("{l:?}\n"));
    }
    out
}
