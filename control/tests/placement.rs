//! Topology and NUMA placement from a fake sysfs tree: two nodes, the process's allowed
//! cores all on node 0, a NIC on node 1. Checks what the API reports and how the policy
//! picks (or refuses) cores, through the client library.

mod common;

use std::path::Path;

use common::Appliance;
use control::client::{Client, Target};
use control::pb;
use control::server::PortInfo;
use tonic::Code;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Node 0: the allowed cores; node 1: four cores this process may not use, the last one
/// offline; `ens1f0` on node 1.
fn fake_sysfs(root: &Path) -> (Vec<u32>, Vec<u32>) {
    let allowed: Vec<u32> = dataplane::topology::allowed_cores().into_iter().collect();
    let first = allowed.last().unwrap() + 1;
    let remote: Vec<u32> = (first..first + 4).collect();
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let all: Vec<u32> = allowed.iter().chain(&remote).copied().collect();
    write(root, "devices/system/cpu/present", &list(&all));
    write(
        root,
        "devices/system/cpu/online",
        &list(&all[..all.len() - 1]),
    );
    write(root, "devices/system/node/online", "0-1");
    write(root, "devices/system/node/node0/cpulist", &list(&allowed));
    write(root, "devices/system/node/node1/cpulist", &list(&remote));
    write(root, "class/net/ens1f0/device/numa_node", "1\n");
    write(root, "class/net/ens1f0/queues/rx-0/rps_cpus", "0\n");
    write(root, "class/net/ens1f0/queues/rx-1/rps_cpus", "0\n");
    (allowed, remote)
}

#[test]
fn topology_and_placement_follow_the_fake_tree() {
    let sys = tempfile::tempdir().unwrap();
    let (allowed, remote) = fake_sysfs(sys.path());
    let a = Appliance::start(0, |o| {
        o.sysfs = sys.path().to_path_buf();
        o.ports = vec![PortInfo {
            interface: Some("ens1f0".into()),
            memory_node: None,
        }];
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Client::connect(&Target::Unix(a.socket.clone()))
            .await
            .unwrap();
        let t = c
            .system
            .get_topology(pb::GetTopologyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.cpus.len(), allowed.len() + 4);
        assert_eq!(t.nodes.len(), 2);
        let c0 = t.cpus.iter().find(|c| c.id == remote[0]).unwrap();
        assert_eq!((c0.node, c0.allowed, c0.online), (Some(1), false, true));
        assert!(!t.cpus.iter().find(|c| c.id == remote[3]).unwrap().online);
        assert_eq!(t.ports[0].interface, "ens1f0");
        assert_eq!(
            (t.ports[0].numa_node, t.ports[0].numa_source.as_str()),
            (Some(1), "sysfs")
        );
        assert_eq!(t.ports[0].queues[0].worker, Some(0));

        let p = c
            .placement
            .get(pb::GetPlacementRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.policy, pb::NumaPolicy::Local as i32);
        assert_eq!(
            (p.ports[0].nic_node, p.ports[0].preferred_node),
            (Some(1), Some(1))
        );

        // Cores: offline, not allowed, does not exist.
        let add = |core: Option<u32>| pb::AddWorkerRequest {
            core,
            queues: vec![],
        };
        let e = c.workers.add(add(Some(remote[3]))).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("is offline"), "{}", e.message());
        let e = c.workers.add(add(Some(remote[0]))).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().starts_with("core: ") && e.message().contains("allowed cpuset"),
            "{}",
            e.message()
        );
        let e = c.workers.add(add(Some(9999))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // Local policy: no allowed core on the NIC's node, so any free allowed core; the
        // queue it then polls is remote.
        let w = c
            .workers
            .add(add(None))
            .await
            .unwrap()
            .into_inner()
            .worker
            .unwrap();
        assert!(allowed.contains(&w.core.unwrap()));
        assert_eq!(w.numa_node, Some(0));
        c.workers
            .assign(pb::AssignQueueRequest {
                queue: Some(pb::QueueRef { port: 0, queue: 0 }),
                worker: w.id,
            })
            .await
            .unwrap();
        let p = c
            .placement
            .get(pb::GetPlacementRequest {})
            .await
            .unwrap()
            .into_inner();
        let wp = p.workers.iter().find(|x| x.worker == w.id).unwrap();
        assert_eq!(wp.remote_queues, vec![pb::QueueRef { port: 0, queue: 0 }]);

        // Explicit policy on node 1: nothing allowed there, so adding without a core fails.
        let set = |policy: pb::NumaPolicy, node| pb::SetPlacementRequest {
            policy: policy as i32,
            node,
        };
        let e = c
            .placement
            .set(set(pb::NumaPolicy::Explicit, Some(9)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(
            e.message().starts_with("node: node 9 does not exist"),
            "{}",
            e.message()
        );
        let e = c
            .placement
            .set(set(pb::NumaPolicy::Explicit, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = c
            .placement
            .set(set(pb::NumaPolicy::Local, Some(0)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = c
            .placement
            .set(set(pb::NumaPolicy::Unspecified, None))
            .await
            .unwrap_err();
        assert!(e.message().starts_with("policy: "), "{}", e.message());
        let p = c
            .placement
            .set(set(pb::NumaPolicy::Explicit, Some(1)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((p.node, p.ports[0].preferred_node), (Some(1), Some(1)));
        let before = c
            .workers
            .list(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner();
        let e = c.workers.add(add(None)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("no free allowed core on node 1"),
            "{}",
            e.message()
        );
        let after = c
            .workers
            .list(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(before, after, "a refused add changes nothing");
    });
    // Close the client's connection (its runtime drives it), so the server need not wait.
    drop(rt);
    assert!(a.stop().accounting_ok);
}
