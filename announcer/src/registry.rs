//! Publishing to the registry: one lease per announcer process, instances attached to it.

use std::future::Future;
use std::time::Duration;

use client::Client;
use proto::{InstanceState, LeaseId, Revision};
use tokio::time::Instant;

use crate::publish::{Desired, DrainFollower, DrainProgress, Key, PublishError, Publisher};

pub struct RegistryPublisher {
    client: Client,
    ttl: Duration,
    lease: Option<LeaseId>,
    /// When the registry last acknowledged the lease (its grant or a keepalive).
    renewed_at: Instant,
    /// What the registry holds under our lease, as far as we know.
    published: Desired,
    /// The revision each entry of `published` was written at.
    written: std::collections::BTreeMap<Key, Revision>,
}

impl RegistryPublisher {
    pub fn new(client: Client, ttl: Duration) -> RegistryPublisher {
        RegistryPublisher { client, ttl, lease: None, renewed_at: Instant::now(), published: Desired::new(), written: Default::default() }
    }

    pub fn lease(&self) -> Option<LeaseId> {
        self.lease
    }

    /// Our lease is gone (expired while we could not renew it, or revoked): so is everything
    /// attached to it.
    fn lost(&mut self, why: String) -> PublishError {
        tracing::warn!(lease = ?self.lease, "{why}; will grant a new lease and register again");
        self.lease = None;
        self.published.clear();
        self.written.clear();
        PublishError::Lost(why)
    }

    /// Runs one write while keeping `lease` alive: a put stuck on a stalled leader waits for the
    /// server's write timeout (5 s), longer than the default TTL (3 s), and the agent's own
    /// keepalive tick cannot run until the write returns. Renewals go on at `TTL/3` from the
    /// last acknowledged one, on their own connection, whatever the write is waiting for.
    async fn renewing<T>(&mut self, lease: LeaseId, write: impl Future<Output = T>) -> T {
        let every = self.tick_interval();
        let (client, renewed_at) = (&self.client, &mut self.renewed_at);
        let renew = async {
            let mut next = *renewed_at + every;
            loop {
                tokio::time::sleep_until(next).await;
                match client.keepalive(lease).await {
                    Ok(_) => {
                        *renewed_at = Instant::now();
                        next = *renewed_at + every;
                    }
                    // Gone: renewing is over, and the write (or the next tick) reports it.
                    Err(e) if e.is_not_found() => {
                        tracing::debug!(lease, error = %e, "the lease is gone while a write is pending");
                        std::future::pending::<()>().await;
                    }
                    // Another node may answer soon; jittered, so a fleet does not retry in step.
                    Err(e) => {
                        tracing::debug!(lease, error = %e, "keepalive during a write failed");
                        next = Instant::now() + Duration::from_millis(150 + rand::random::<u64>() % 200);
                    }
                }
            }
        };
        tokio::select! {
            r = write => r,
            () = renew => unreachable!("the renewal loop never ends"),
        }
    }

    /// Starts a new lease for a non-empty `desired`: one write that grants the lease and puts (the
    /// first `MAX_REGISTER_INSTANCES` of) the instances under it, so the registry never holds
    /// this host's lease without its instances; `sync` puts any others after.
    async fn register(&mut self, desired: &Desired) -> Result<LeaseId, PublishError> {
        self.published.clear();
        self.written.clear();
        let first: Vec<_> = desired.iter().take(proto::validate::MAX_REGISTER_INSTANCES).collect();
        // Tried for every new lease: a registry older than this announcer (a rolling upgrade)
        // has no `POST /v1/register`, and is asked again once it may have been upgraded.
        {
            let instances = first.iter().map(|(key, a)| as_registered(key, a)).collect();
            match self.client.register(self.ttl, instances).await {
                Ok(g) => {
                    self.lease = Some(g.lease_id);
                    self.renewed_at = Instant::now();
                    for (key, a) in first {
                        tracing::info!(service = %key.0, instance = %key.1, state = %a.state, lease = g.lease_id, revision = g.revision, "registered");
                        self.published.insert(key.clone(), a.clone());
                        self.written.insert(key.clone(), g.revision);
                    }
                    return Ok(g.lease_id);
                }
                Err(client::Error::Api { status: 404, body, .. }) if body.code == proto::ErrorCode::NotFound => {
                    tracing::info!("the registry has no POST /v1/register (an older node); granting a lease and putting instances one by one");
                }
                Err(e) => return Err(self.map(e)),
            }
        }
        let g = self.client.grant(self.ttl).await.map_err(|e| self.map(e))?;
        tracing::info!(lease = g.lease_id, ttl_ms = g.ttl_ms, "granted a lease");
        self.lease = Some(g.lease_id);
        self.renewed_at = Instant::now();
        Ok(g.lease_id)
    }

    fn map(&mut self, e: client::Error) -> PublishError {
        match &e {
            client::Error::Api { status: 404, body, .. } if body.code == proto::ErrorCode::LeaseNotFound => self.lost(format!("lease gone: {}", body.message)),
            e if e.is_retriable() => PublishError::Unavailable(e.to_string()),
            _ => PublishError::Rejected(e.to_string()),
        }
    }
}

/// An announcement as the registry takes it (`POST /v1/register`, or a PUT body via `spec`).
fn as_registered(key: &Key, a: &crate::publish::Announcement) -> proto::RegisterInstance {
    proto::RegisterInstance {
        service: key.0.clone(),
        instance: key.1.clone(),
        address: a.address.clone(),
        port: a.port as u64,
        weight: a.weight,
        state: a.state,
        meta: a.meta.clone(),
    }
}

impl Publisher for RegistryPublisher {
    fn tick_interval(&self) -> Duration {
        self.ttl / 3
    }

    async fn sync(&mut self, desired: &Desired) -> Result<(), PublishError> {
        let lease = match self.lease {
            Some(l) => l,
            // Nothing to announce yet (a check still failing): no lease until there is, so the
            // first registration is one write.
            None if desired.is_empty() => return Ok(()),
            None => self.register(desired).await?,
        };
        for (key, a) in desired {
            if self.published.get(key) == Some(a) {
                continue;
            }
            let spec = as_registered(key, a).spec(Some(lease));
            let client = self.client.clone();
            let w = self.renewing(lease, client.put_instance(&key.0, &key.1, &spec)).await.map_err(|e| self.map(e))?;
            tracing::info!(service = %key.0, instance = %key.1, state = %a.state, revision = w.revision, "registered");
            self.published.insert(key.clone(), a.clone());
            self.written.insert(key.clone(), w.revision);
        }
        let stale: Vec<_> = self.published.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        for key in stale {
            let client = self.client.clone();
            match self.renewing(lease, client.delete_instance(&key.0, &key.1)).await {
                Ok(w) => tracing::info!(service = %key.0, instance = %key.1, revision = w.revision, "deregistered"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(self.map(e)),
            }
            self.published.remove(&key);
            self.written.remove(&key);
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), PublishError> {
        let Some(lease) = self.lease else { return Ok(()) };
        self.client.keepalive(lease).await.map_err(|e| self.map(e))?;
        self.renewed_at = Instant::now();
        Ok(())
    }

    /// Waits for the balancers' reports (`client::convergence::follow`) to show, per service, the revision
    /// of the last drain written for it.
    fn follow_drain(&self, progress: tokio::sync::mpsc::Sender<DrainProgress>) -> DrainFollower {
        let mut targets = client::convergence::Targets::new();
        for (key, a) in &self.published {
            if let (InstanceState::Drain, Some(&rev)) = (a.state, self.written.get(key)) {
                let t = targets.entry(key.0.clone()).or_insert(rev);
                *t = (*t).max(rev);
            }
        }
        Box::pin(client::convergence::follow(self.client.clone(), targets, progress))
    }

    async fn shutdown(&mut self) -> Result<(), PublishError> {
        let keys: Vec<_> = self.published.keys().cloned().collect();
        for key in keys {
            if let Err(e) = self.client.delete_instance(&key.0, &key.1).await {
                if !e.is_not_found() {
                    tracing::warn!(service = %key.0, instance = %key.1, error = %e, "could not deregister; the lease revoke removes it");
                }
            }
        }
        self.published.clear();
        self.written.clear();
        if let Some(lease) = self.lease.take() {
            match self.client.revoke(lease).await {
                Ok(_) => tracing::info!(lease, "revoked the lease"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(PublishError::Unavailable(format!("revoking lease {lease}: {e}"))),
            }
        }
        Ok(())
    }
}
