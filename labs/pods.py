"""Pods wired the way Calico CNI and Felix wire them, so the BGP layer sees a real node's kernel state.

Stage: the lab's workload dataplane (stands in for the CNI plugin plus Felix's route and ARP programming).

Owns: one pod = a namespace, a veth pair (``eth0`` in the pod, ``cali<11 hex>`` in the node), the pod's
/32 address and default route, and on the node the ``<ip>/32 dev cali… scope link proto boot`` route that the
BGP layer picks up and exports.

Complicating factors:
- Calico pods route everything through the link-local gateway 169.254.1.1 that nobody owns; the node's cali
  end answers for it by proxy ARP. A lab node has no default route, and proxy ARP only answers for
  destinations the node can route, so the pod instead gets a static neighbour for 169.254.1.1 (the cali
  end's MAC), which also spares the first ping an ARP round trip.
- Felix writes a static neighbour for the pod IP on the cali end; without it the node's first packet to the
  pod would wait for ARP, and Calico does not rely on the pod answering ARP.
- The cali name is derived from the pod name (as Calico derives it from the workload endpoint id), so
  deleting a pod needs nothing but its name.
- IPv6 (dual-stack pods) mirrors it: the pod routes everything via Calico's link-local gateway
  fe80::ecee:eeff:feee:eeee, made a static neighbour on the cali end's MAC, and the node gets
  ``<ip>/128 dev cali… proto boot`` plus a static neighbour for the pod. Addresses skip duplicate address
  detection (``nodad``) so they are usable at once.
"""

from __future__ import annotations

import hashlib

from labs import netns

GATEWAY = "169.254.1.1"  # Calico's fixed pod gateway
GATEWAY6 = "fe80::ecee:eeff:feee:eeee"  # Calico's IPv6 pod gateway (the link-local of ee:ee:ee:ee:ee:ee)
POD_IFNAME = "eth0"
PROTO_BOOT = "boot"  # Felix's DeviceRouteProtocol default (3)


def cali_ifname(pod: str) -> str:
    """`cali` + 11 hex digits of a SHA-1 of the pod name: 15 characters, IFNAMSIZ exactly."""
    return "cali" + hashlib.sha1(pod.encode()).hexdigest()[:11]


def create_pod(node_netns: str, pod_netns: str, pod: str, ipv4: str, ipv6: str = "") -> str:
    """Create the pod's namespace and wiring; returns the cali interface name on the node."""
    cali = cali_ifname(pod)
    netns.add_netns(pod_netns)
    netns.add_veth(pod_netns, POD_IFNAME, node_netns, cali)

    # Node side first: proxy_arp before the link is up, as Felix configures the interface.
    netns.set_sysctl(node_netns, f"net.ipv4.conf.{cali}.proxy_arp", 1)
    netns.set_sysctl(node_netns, f"net.ipv4.neigh.{cali}.proxy_delay", 0)
    netns.link_up(node_netns, cali)
    cali_mac = netns.link_mac(node_netns, cali)

    netns.add_address(pod_netns, POD_IFNAME, f"{ipv4}/32")
    netns.link_up(pod_netns, POD_IFNAME)
    netns.replace_neighbour(pod_netns, GATEWAY, cali_mac, POD_IFNAME)
    netns.replace_route(pod_netns, "default", "via", GATEWAY, "dev", POD_IFNAME, "onlink")

    pod_mac = netns.link_mac(pod_netns, POD_IFNAME)
    netns.replace_neighbour(node_netns, ipv4, pod_mac, cali)
    netns.replace_route(node_netns, f"{ipv4}/32", "dev", cali, "scope", "link", "proto", PROTO_BOOT)
    if ipv6:
        netns.ip(pod_netns, "-6", "address", "add", f"{ipv6}/128", "dev", POD_IFNAME, "nodad")
        netns.replace_neighbour(pod_netns, GATEWAY6, cali_mac, POD_IFNAME)
        netns.ip(pod_netns, "-6", "route", "replace", "default", "via", GATEWAY6, "dev", POD_IFNAME)
        netns.replace_neighbour(node_netns, ipv6, pod_mac, cali)
        netns.ip(node_netns, "-6", "route", "replace", f"{ipv6}/128", "dev", cali, "proto", PROTO_BOOT)
    return cali


def delete_pod(node_netns: str, pod_netns: str, pod: str) -> None:
    """Remove the pod; safe on a half-created or already deleted pod."""
    cali = cali_ifname(pod)
    if netns.exists(node_netns):
        # Deleting the link takes its route and neighbour with it (both are bound to the device).
        netns.delete_link(node_netns, cali)
    netns.delete_netns(pod_netns)
