"""The etcd member command line."""

from __future__ import annotations

import pytest

from election.member import EtcdTls, etcd_argv

CLUSTER = "n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380,n3=http://10.0.0.3:2380"


def flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv[1:])


def test_plain_member_listens_where_it_advertises_and_is_tuned_for_a_small_cluster() -> None:
    argv = etcd_argv("n1", "/var/lib/corral/etcd", "http://10.0.0.1:2379", "http://10.0.0.1:2380", CLUSTER, "new", None)
    assert argv[0] == "etcd"
    f = flags(argv)
    assert f["name"] == "n1" and f["data-dir"] == "/var/lib/corral/etcd"
    assert f["listen-client-urls"] == f["advertise-client-urls"] == "http://10.0.0.1:2379"
    assert f["listen-peer-urls"] == f["initial-advertise-peer-urls"] == "http://10.0.0.1:2380"
    assert f["initial-cluster"] == CLUSTER and f["initial-cluster-state"] == "new"
    assert (f["heartbeat-interval"], f["election-timeout"]) == ("50", "500"), "a LAN: etcd elects in ~0.7 s"
    assert f["pre-vote"] == "true", "a healed minority member must not depose the majority's leader"
    assert (f["auto-compaction-mode"], f["auto-compaction-retention"]) == ("revision", "1000")
    assert int(f["quota-backend-bytes"]) > 0
    assert f["enable-v2"] == "false" and f["logger"] == "zap" and f["log-level"] == "warn"
    assert f["experimental-watch-progress-notify-interval"] == "5s"
    assert not any("cert" in arg or "key-file" in arg for arg in argv)


def test_tls_member_requires_client_certificates_from_clients_and_peers() -> None:
    tls = EtcdTls(ca="/etc/corral/ca.pem", cert="/etc/corral/node.pem", key="/etc/corral/node-key.pem")
    cluster = CLUSTER.replace("http:", "https:")
    f = flags(etcd_argv("n1", "/d", "https://10.0.0.1:2379", "https://10.0.0.1:2380", cluster, "existing", tls))
    assert f["initial-cluster-state"] == "existing"
    assert (f["cert-file"], f["key-file"], f["trusted-ca-file"]) == (tls.cert, tls.key, tls.ca)
    assert (f["peer-cert-file"], f["peer-key-file"], f["peer-trusted-ca-file"]) == (tls.cert, tls.key, tls.ca)
    assert f["client-cert-auth"] == f["peer-client-cert-auth"] == "true"


def test_urls_must_match_whether_tls_is_configured() -> None:
    tls = EtcdTls(ca="ca", cert="c", key="k")
    with pytest.raises(ValueError, match="client_url 'http://10.0.0.1:2379' must be an https://"):
        etcd_argv(
            "n1", "/d", "http://10.0.0.1:2379", "https://10.0.0.1:2380",
            CLUSTER.replace("http:", "https:"), "new", tls,
        )
    with pytest.raises(ValueError, match="initial_cluster 'http://10.0.0.2:2380' must be an https://"):
        etcd_argv(
            "n1", "/d", "https://10.0.0.1:2379", "https://10.0.0.1:2380",
            "n1=https://10.0.0.1:2380,n2=http://10.0.0.2:2380", "new", tls,
        )
    with pytest.raises(ValueError, match="must be an http://"):
        etcd_argv("n1", "/d", "https://10.0.0.1:2379", "http://10.0.0.1:2380", CLUSTER, "new", None)


def test_unknown_cluster_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="'new' or 'existing'"):
        etcd_argv("n1", "/d", "http://a:1", "http://a:2", "n1=http://a:2", "join", None)  # type: ignore[arg-type]
