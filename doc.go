// Package sealift is a Go SDK for the secure live migration of a virtual
// machine out of a trusted environment into an untrusted one, after FIG. 3
// of US 2017/0329624 A1. A control plane embeds migration.Migrator:
//
//  1. select the VM and the target environment; the plan is validated
//     before anything is touched (blocks 310, 315);
//  2. fence: block data communications between the VM and other VMs (320);
//  3. live-migrate it and restart it at the target (325, 330, 345);
//  4. if its whole subnet moved, add an encrypted redirect tunnel from the
//     secure environment's routing core to the target (335, 340);
//  5. establish a secure link (XFRM IPsec or WireGuard) between the
//     restarted VM and the VMs left behind (345);
//  6. audit its non-managed connections: keep the secure ones, reset the
//     unsecured ones so they come back over the link (355-365);
//  7. enable communications again, over the secure link only (370);
//  8. watch the routing core until routes to the new place propagated,
//     then remove the redirect tunnel (375-390).
//
// The contracts are small interfaces in hypervisor, fence, tunnel, conn and
// routing; backends are subpackages the embedding program picks
// (hypervisor/qemu, hypervisor/libvirt, fence/nft, fence/linkstate,
// tunnel/wireguard, ipsec, conn/conntrack, conn/sockdiag,
// routing/netlinkroute, routing/gobgp). migration.Migrator composes them,
// journals every step, rolls back a failure before the target resumes and
// rolls forward (or stays fenced, saying why) after; Recover finishes what
// a stopped controller left. migration/migrationtest has in-memory fakes
// of every contract for testing control planes.
package sealift
