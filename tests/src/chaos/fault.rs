//! Faults: SIGKILL and restart of a registry node (the leader at least a third of the time),
//! SIGSTOP/SIGCONT pauses longer than the election timeout, a firewall partition of one node,
//! a stalled disk (every Raft log flush of one node hangs, through the test-only
//! `--fault-disk-stall-file`), and SIGKILL of web hosts (announcer and server), sometimes
//! together with the leader.

use std::process::Command;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use super::topology::Topology;

/// What happened when, for the validators.
#[derive(Debug, Clone)]
pub enum Event {
    RegistryKilled {
        node: usize,
        leader: bool,
    },
    RegistryRestarted {
        node: usize,
    },
    RegistryPaused {
        node: usize,
        leader: bool,
    },
    RegistryResumed {
        node: usize,
    },
    Partitioned {
        node: usize,
        leader: bool,
    },
    Healed {
        node: usize,
    },
    DiskStalled {
        node: usize,
        leader: bool,
    },
    DiskResumed {
        node: usize,
    },
    /// A host's announcer and web server were SIGKILLed.
    HostKilled {
        host: usize,
        with_leader: bool,
    },
    HostRestarted {
        host: usize,
    },
}

#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<(Instant, Event)>,
}

impl Log {
    fn push(&mut self, e: Event) {
        eprintln!("[chaos] {e:?}");
        self.events.push((Instant::now(), e));
    }

    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
}

/// Drops every packet from or to one loopback address while alive; the rules go on drop, even
/// when a test panics.
pub struct Partition {
    ip: String,
}

fn iptables(op: &str, dir: &str, ip: &str) -> bool {
    Command::new("iptables").args([op, "INPUT", dir, ip, "-j", "DROP"]).stderr(std::process::Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

impl Partition {
    pub fn new(ip: &str) -> Option<Partition> {
        if !iptables("-I", "-s", ip) {
            return None;
        }
        iptables("-I", "-d", ip);
        Some(Partition { ip: ip.to_string() })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        while iptables("-D", "-s", &self.ip) {}
        while iptables("-D", "-d", &self.ip) {}
    }
}

/// Whether this machine lets us install firewall rules (root with iptables).
pub fn can_partition() -> bool {
    Partition::new("127.255.255.254").is_some()
}

async fn pick_node(t: &Topology) -> (usize, bool) {
    let leader = t.leader().await;
    // Half the time the leader, so well over a third of registry faults hit it.
    if let Some(l) = leader {
        if rand::thread_rng().gen_bool(0.5) {
            return (l, true);
        }
    }
    let n = rand::thread_rng().gen_range(0..t.nodes.len());
    (n, Some(n) == leader)
}

/// Runs faults until `until`, one at a time with calm in between, and leaves everything healed
/// and running.
pub async fn run(t: &mut Topology, until: Instant, partitions: bool) -> Log {
    let mut log = Log::default();
    let mut kinds = vec!["kill", "pause", "host", "stall", "host+leader"];
    if partitions {
        kinds.push("partition");
    }
    let mut round = 0usize;
    while Instant::now() < until {
        let kind = kinds[round % kinds.len()];
        round += 1;
        match kind {
            "kill" => {
                let (n, leader) = pick_node(t).await;
                t.nodes[n].proc.kill();
                log.push(Event::RegistryKilled { node: n, leader });
                tokio::time::sleep(Duration::from_secs(3)).await;
                t.nodes[n].proc.start();
                log.push(Event::RegistryRestarted { node: n });
            }
            "pause" => {
                let (n, leader) = pick_node(t).await;
                t.nodes[n].proc.signal("STOP");
                log.push(Event::RegistryPaused { node: n, leader });
                // Five times the default maximum election timeout (300 ms): the others elect a new leader.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                t.nodes[n].proc.signal("CONT");
                log.push(Event::RegistryResumed { node: n });
            }
            "stall" => {
                let (n, leader) = pick_node(t).await;
                std::fs::write(&t.nodes[n].stall_file, b"").expect("create the stall file");
                log.push(Event::DiskStalled { node: n, leader });
                // TTL + 3 s: a stalled leader that kept renewing would lose every lease. Meanwhile
                // note when the others have elected someone else (the fault took effect).
                let until = Instant::now() + super::topology::TTL + Duration::from_secs(3);
                let mut replaced = !leader;
                while Instant::now() < until {
                    if !replaced && t.leader_other_than(n).await.is_some() {
                        replaced = true;
                        eprintln!("[chaos] stalled leader {n} replaced");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = std::fs::remove_file(&t.nodes[n].stall_file);
                log.push(Event::DiskResumed { node: n });
            }
            "partition" => {
                let (n, leader) = pick_node(t).await;
                if let Some(p) = Partition::new(&t.nodes[n].ip) {
                    log.push(Event::Partitioned { node: n, leader });
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    drop(p);
                    log.push(Event::Healed { node: n });
                }
            }
            "host" | "host+leader" => {
                let alive: Vec<usize> = (0..t.hosts.len()).filter(|i| t.hosts[*i].alive).collect();
                let Some(&h) = alive.choose(&mut rand::thread_rng()) else { continue };
                let with_leader = kind == "host+leader";
                let leader = if with_leader { t.leader().await } else { None };
                t.hosts[h].announcer.kill();
                t.hosts[h].web.kill();
                if let Some(l) = leader {
                    t.nodes[l].proc.kill();
                    log.push(Event::RegistryKilled { node: l, leader: true });
                }
                t.hosts[h].alive = false;
                log.push(Event::HostKilled { host: h, with_leader: leader.is_some() });
                // Long enough for the instance to leave (TTL + 1 s) before it comes back.
                tokio::time::sleep(Duration::from_secs(6)).await;
                if let Some(l) = leader {
                    t.nodes[l].proc.start();
                    log.push(Event::RegistryRestarted { node: l });
                }
                let (name, web, api) = (t.hosts[h].name.clone(), t.hosts[h].web_port, t.hosts[h].api_port);
                t.hosts[h] = t.spawn_host(&name, web, api);
                log.push(Event::HostRestarted { host: h });
            }
            _ => unreachable!(),
        }
        // Calm between faults so each one's effect can be told apart.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    log
}
