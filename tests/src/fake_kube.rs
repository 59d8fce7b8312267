//! A fake Kubernetes API server, for what no apiserver on this machine can show: a
//! controller's list and watch against the protocol kube-runtime's reflector speaks.
//!
//! What it keeps of the real one:
//! - one resourceVersion counter for every object, as etcd's revision;
//! - lists answer with the collection's resourceVersion; a watch from a
//!   resourceVersion replays every change after it, then follows live ones;
//! - a watch from a resourceVersion older than the retained history (`compact`)
//!   gets an `ERROR` event with a 410 `Expired` Status, as the apiserver answers
//!   "too old resource version", and ends;
//! - `BOOKMARK` events when the client allows them (`set_bookmark_interval`);
//! - `timeoutSeconds` ends a watch; `close_watches` ends all of them, as an
//!   apiserver restart does;
//! - writes carry optimistic concurrency: an update whose resourceVersion is not the
//!   stored one is a 409 Conflict, a create of an existing name a 409 AlreadyExists;
//! - `fieldSelector=spec.nodeName=…` and `metadata.name=…` on lists;
//!   `labelSelector` terms `k=v`, `k!=v`, `k in (…)`, `k notin (…)`, `k`, `!k` on
//!   lists and watches (an object that stops matching is not sent as DELETED: the
//!   tests label namespaces before they start a watch);
//! - discovery of whereabouts' group once `serve_whereabouts` is set, as the CRD's
//!   installation makes the apiserver serve it.
//!
//! Resources: pods, nodes, namespaces, NetworkAttachmentDefinitions, whereabouts
//! IPPools, Leases, events.k8s.io Events. Objects are JSON values; tests change them in-process (`apply`,
//! `delete`), controllers over HTTP.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Node,
    Namespace,
    NetworkAttachmentDefinition,
    IpPool,
    Lease,
    Event,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Pod,
        Kind::Node,
        Kind::Namespace,
        Kind::NetworkAttachmentDefinition,
        Kind::IpPool,
        Kind::Lease,
        Kind::Event,
    ];

    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Node | Kind::Namespace => "v1",
            Kind::NetworkAttachmentDefinition => "k8s.cni.cncf.io/v1",
            Kind::IpPool => "whereabouts.cni.cncf.io/v1alpha1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::NetworkAttachmentDefinition => "network-attachment-definitions",
            Kind::IpPool => "ippools",
            Kind::Lease => "leases",
            Kind::Event => "events",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::NetworkAttachmentDefinition => "NetworkAttachmentDefinition",
            Kind::IpPool => "IPPool",
            Kind::Lease => "Lease",
            Kind::Event => "Event",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    fn prefix(self) -> String {
        match self.api_version() {
            "v1" => "/api/v1".into(),
            gv => format!("/apis/{gv}"),
        }
    }
}

/// One request as the server saw it, for counting a controller's API calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub verb: &'static str,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    kind_of_change: &'static str,
    object: Value,
}

type Key = (Kind, String, String);

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    bookmark_every: Option<Duration>,
    requests: Vec<Request>,
    uids: u64,
    whereabouts: bool,
}

#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    /// Bumped by `close_watches`: every open watch ends.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for FakeKube {
    fn default() -> Self {
        FakeKube {
            inner: Arc::default(),
            changes: broadcast::channel(65_536).0,
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn status(&self) -> Value {
        status_object(self.code, self.reason, &self.message)
    }
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeKube {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (kind and apiVersion are filled in), as a
    /// controller's write would; returns it as stored.
    pub fn apply(&self, kind: Kind, mut object: Value) -> Value {
        let (namespace, name) = names(kind, &object);
        let mut inner = self.lock();
        let existing = inner
            .objects
            .get(&(kind, namespace.clone(), name.clone()))
            .cloned();
        if let Some(old) = &existing {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        self.store(
            &mut inner,
            kind,
            &namespace,
            &name,
            object,
            existing.is_some(),
        )
    }

    /// Removes an object at once (a force delete, or the end of a graceful one).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        let mut object = inner
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))?;
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut inner, kind, "DELETED", object.clone());
        Some(object)
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Drops the change history, as etcd compaction does: every watch that resumes
    /// from before now gets 410 Gone and must list again.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        inner.oldest = inner.rv;
        inner.history.clear();
    }

    /// Ends every open watch, as an apiserver restart does.
    pub fn close_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Serves whereabouts' API group in discovery, as installing its CRDs does.
    pub fn serve_whereabouts(&self) {
        self.lock().whereabouts = true;
    }

    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        self.lock().bookmark_every = every;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::serve(self.router(), addr).await
    }

    fn store(
        &self,
        inner: &mut Inner,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: Value,
        existed: bool,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none_or(Value::is_null) {
            inner.uids += 1;
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", inner.uids));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        if kind.namespaced() {
            meta["namespace"] = json!(namespace);
        }
        inner.objects.insert(
            (kind, namespace.to_owned(), name.to_owned()),
            object.clone(),
        );
        let change = if existed { "MODIFIED" } else { "ADDED" };
        self.record(inner, kind, change, object.clone());
        object
    }

    fn record(&self, inner: &mut Inner, kind: Kind, kind_of_change: &'static str, object: Value) {
        let change = Change {
            rv: inner.rv,
            kind,
            kind_of_change,
            object,
        };
        inner.history.push_back(change.clone());
        // Sent under the lock, so a watch that subscribes under it misses nothing.
        let _ = self.changes.send(change);
    }
}

fn names(kind: Kind, object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let namespace = if kind.namespaced() {
        meta["namespace"].as_str().unwrap_or("default").to_owned()
    } else {
        String::new()
    };
    let name = meta["name"]
        .as_str()
        .expect("objects given to the fake have metadata.name")
        .to_owned();
    (namespace, name)
}

/// Where a request goes: `/api/v1/namespaces/ns/pods/name` and the like.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    Kind::ALL.into_iter().find_map(|kind| target_of(kind, path))
}

fn target_of(kind: Kind, path: &str) -> Option<Target> {
    let rest = path.strip_prefix(&kind.prefix())?.strip_prefix('/')?;
    let rest: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] if *plural == kind.plural() => Some(Target {
            kind,
            namespace,
            name: None,
        }),
        [plural, name] if *plural == kind.plural() => Some(Target {
            kind,
            namespace,
            name: Some((*name).to_owned()),
        }),
        _ => None,
    }
}

async fn handle(State(fake): State<FakeKube>, method: Method, uri: Uri, body: Bytes) -> Response {
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let group = format!("/apis/{}", Kind::IpPool.api_version());
    if method == Method::GET && uri.path() == group && fake.lock().whereabouts {
        let list = json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": Kind::IpPool.api_version(),
            "resources": [{"name": "ippools", "singularName": "ippool", "namespaced": true,
                           "kind": "IPPool", "verbs": ["get", "list", "watch", "create",
                           "update", "patch", "delete"]}]});
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    let Some(t) = target(uri.path()) else {
        return error(ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        ));
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &t.name, watching) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => "other",
    };
    fake.lock().requests.push(Request { verb, kind: t.kind });
    let result = match verb {
        "watch" => return watch_response(&fake, &t, &query),
        "list" => Ok(list(&fake, &t, &query)),
        "get" => get(&fake, &t),
        "create" => create(&fake, &t, &body),
        "update" => update(&fake, &t, &body),
        "patch" => patch(&fake, &t, &body),
        "delete" => delete(&fake, &t),
        _ => Err(ApiError::new(405, "MethodNotAllowed", "not supported here")),
    };
    match result {
        Ok((code, value)) => (
            code,
            [("content-type", "application/json")],
            value.to_string(),
        )
            .into_response(),
        Err(e) => error(e),
    }
}

fn error(e: ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [("content-type", "application/json")],
        e.status().to_string(),
    )
        .into_response()
}

fn key(t: &Target) -> Key {
    (
        t.kind,
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    )
}

fn selected(object: &Value, t: &Target, query: &BTreeMap<String, String>) -> bool {
    if let Some(ns) = &t.namespace
        && object["metadata"]["namespace"].as_str() != Some(ns.as_str())
    {
        return false;
    }
    if let Some(selector) = query.get("labelSelector")
        && !labels_match(&object["metadata"]["labels"], selector)
    {
        return false;
    }
    let Some(selector) = query.get("fieldSelector") else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((field, want)) = term.split_once('=') else {
            return false;
        };
        let got = match field {
            "spec.nodeName" => object["spec"]["nodeName"].as_str(),
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            _ => None,
        };
        got.unwrap_or("") == want.trim_start_matches('=')
    })
}

/// A label selector string against an object's labels.
fn labels_match(labels: &Value, selector: &str) -> bool {
    let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
    // Commas split terms, except inside the parentheses of a set.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((k, rest)) = term.split_once(" notin ") {
                return label(k).is_none_or(|v| !set(rest).iter().any(|x| x == v));
            }
            if let Some((k, rest)) = term.split_once(" in ") {
                return label(k).is_some_and(|v| set(rest).iter().any(|x| x == v));
            }
            if let Some((k, v)) = term.split_once("!=") {
                return label(k) != Some(v.trim());
            }
            if let Some((k, v)) = term.split_once('=') {
                return label(k) == Some(v.trim_start_matches('=').trim());
            }
            match term.strip_prefix('!') {
                Some(k) => label(k).is_none(),
                None => label(term).is_some(),
            }
        })
}

fn list(fake: &FakeKube, t: &Target, query: &BTreeMap<String, String>) -> (StatusCode, Value) {
    let inner = fake.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((k, _, _), v)| *k == t.kind && selected(v, t, query))
        .map(|(_, v)| v.clone())
        .collect();
    (
        StatusCode::OK,
        json!({"kind": format!("{}List", t.kind.name()), "apiVersion": t.kind.api_version(),
               "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
    )
}

fn get(fake: &FakeKube, t: &Target) -> Result<(StatusCode, Value), ApiError> {
    fake.lock()
        .objects
        .get(&key(t))
        .map(|v| (StatusCode::OK, v.clone()))
        .ok_or_else(|| not_found(t))
}

fn not_found(t: &Target) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            t.kind.plural(),
            t.name.as_deref().unwrap_or("")
        ),
    )
}

fn parse(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))
}

fn create(fake: &FakeKube, t: &Target, body: &Bytes) -> Result<(StatusCode, Value), ApiError> {
    let mut object = parse(body)?;
    if let Some(ns) = &t.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return Err(ApiError::new(
            422,
            "Invalid",
            "metadata.name: Required value",
        ));
    };
    let namespace = t.namespace.clone().unwrap_or_default();
    let mut inner = fake.lock();
    if inner
        .objects
        .contains_key(&(t.kind, namespace.clone(), name.clone()))
    {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.kind.plural()),
        ));
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    let stored = fake.store(&mut inner, t.kind, &namespace, &name, object, false);
    Ok((StatusCode::CREATED, stored))
}

fn update(fake: &FakeKube, t: &Target, body: &Bytes) -> Result<(StatusCode, Value), ApiError> {
    let object = parse(body)?;
    let mut inner = fake.lock();
    let current = inner
        .objects
        .get(&key(t))
        .cloned()
        .ok_or_else(|| not_found(t))?;
    let sent = object["metadata"]["resourceVersion"].as_str();
    if sent.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                t.kind.plural(),
                t.name.as_deref().unwrap_or("")
            ),
        ));
    }
    let (namespace, name) = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    let mut object = object;
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    object["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    let stored = fake.store(&mut inner, t.kind, &namespace, &name, object, true);
    Ok((StatusCode::OK, stored))
}

/// A JSON merge patch (RFC 7386), which is what a strategic merge patch of plain
/// fields also does.
fn patch(fake: &FakeKube, t: &Target, body: &Bytes) -> Result<(StatusCode, Value), ApiError> {
    let patch = parse(body)?;
    let mut inner = fake.lock();
    let mut object = inner
        .objects
        .get(&key(t))
        .cloned()
        .ok_or_else(|| not_found(t))?;
    merge(&mut object, &patch);
    let (namespace, name) = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    let stored = fake.store(&mut inner, t.kind, &namespace, &name, object, true);
    Ok((StatusCode::OK, stored))
}

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in fields {
                if v.is_null() {
                    target.as_object_mut().map(|o| o.remove(k));
                } else {
                    merge(&mut target[k.as_str()], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn delete(fake: &FakeKube, t: &Target) -> Result<(StatusCode, Value), ApiError> {
    let (namespace, name) = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    fake.delete(t.kind, &namespace, &name)
        .map(|v| (StatusCode::OK, v))
        .ok_or_else(|| not_found(t))
}

fn event_line(kind_of_change: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind_of_change, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(fake: &FakeKube, t: &Target, query: &BTreeMap<String, String>) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let mut live;
    let mut first = Vec::new();
    let last_sent;
    let bookmark_every;
    {
        let inner = fake.lock();
        live = fake.changes.subscribe();
        bookmark_every = inner.bookmark_every;
        if from != 0 && from < inner.oldest {
            let status = status_object(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", inner.oldest),
            );
            first.push(event_line("ERROR", &status));
            for line in first {
                let _ = tx.unbounded_send(line);
            }
            drop(tx);
            return stream_body(rx);
        }
        if from == 0 {
            // "Start at most recent": the current objects as ADDED, then changes.
            for ((k, _, _), v) in &inner.objects {
                if *k == t.kind && selected(v, t, query) {
                    first.push(event_line("ADDED", v));
                }
            }
        } else {
            for c in inner
                .history
                .iter()
                .filter(|c| c.rv > from && c.kind == t.kind)
            {
                if selected(&c.object, t, query) {
                    first.push(event_line(c.kind_of_change, &c.object));
                }
            }
        }
        last_sent = inner.rv;
    }
    for line in first {
        let _ = tx.unbounded_send(line);
    }
    let kind = t.kind;
    let namespace = t.namespace.clone();
    let query = query.clone();
    let fake = fake.clone();
    let mut generation = fake.generation.subscribe();
    generation.mark_unchanged();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut bookmark =
            tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
        bookmark.tick().await;
        let t = Target {
            kind,
            namespace,
            name: None,
        };
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(c) if c.rv > last_sent && c.kind == kind && selected(&c.object, &t, &query) => {
                        if tx.unbounded_send(event_line(c.kind_of_change, &c.object)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A watcher that fell behind is cut off, as the apiserver does.
                    Err(_) => return,
                },
                _ = bookmark.tick(), if bookmarks && bookmark_every.is_some() => {
                    let rv = fake.lock().rv;
                    let mark = json!({"kind": kind.name(), "apiVersion": kind.api_version(),
                                      "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.unbounded_send(event_line("BOOKMARK", &mark)).is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = generation.changed() => return,
            }
        }
    });
    stream_body(rx)
}

fn stream_body(rx: futures::channel::mpsc::UnboundedReceiver<Bytes>) -> Response {
    let body = Body::from_stream(rx.map(Ok::<_, Infallible>));
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_match_as_the_apiserver_reads_them() {
        let labels = json!({"team": "core", "kubernetes.io/metadata.name": "multus-demo"});
        for (selector, want) in [
            ("team=core", true),
            ("team==core", true),
            ("team!=core", false),
            (
                "kubernetes.io/metadata.name notin (kube-system,ipmgmt)",
                true,
            ),
            (
                "kubernetes.io/metadata.name notin (kube-system, multus-demo)",
                false,
            ),
            ("team in (core,edge),kubernetes.io/metadata.name", true),
            ("team in (edge)", false),
            ("!tier", true),
            ("tier", false),
            ("tier notin (x)", true),
        ] {
            assert_eq!(labels_match(&labels, selector), want, "{selector}");
        }
    }

    #[test]
    fn paths_name_their_resource() {
        let t = target("/api/v1/namespaces/ns/pods/p").unwrap();
        assert_eq!(
            (t.kind, t.namespace.as_deref(), t.name.as_deref()),
            (Kind::Pod, Some("ns"), Some("p"))
        );
        let t = target("/api/v1/pods").unwrap();
        assert_eq!((t.kind, t.namespace, t.name), (Kind::Pod, None, None));
        let t = target("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.kind, t.name.as_deref()), (Kind::Node, Some("n1")));
        let t = target("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions").unwrap();
        assert_eq!(t.kind, Kind::NetworkAttachmentDefinition);
        let t = target("/apis/coordination.k8s.io/v1/namespaces/ipmgmt/leases/l").unwrap();
        assert_eq!((t.kind, t.name.as_deref()), (Kind::Lease, Some("l")));
        assert!(target("/api/v1/configmaps").is_none());
        let t = target("/api/v1/namespaces").unwrap();
        assert_eq!((t.kind, t.namespace), (Kind::Namespace, None));
        let t = target("/api/v1/namespaces/multus-demo").unwrap();
        assert_eq!(t.kind, Kind::Namespace);
        assert_eq!(t.name.as_deref(), Some("multus-demo"));
        let t = target("/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/kube-system/ippools")
            .unwrap();
        assert_eq!(t.kind, Kind::IpPool);
    }
}
