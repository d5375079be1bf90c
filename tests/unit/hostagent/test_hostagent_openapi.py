from hostagent.api.app import build_app
from hostagent.api.openapi import PATHS, openapi_document


def test_openapi_document_lists_exactly_the_served_routes():
    served = set()
    for node_site in (True, False):  # routes only; no handler runs
        app = build_app(agent=None, node_site=node_site)
        served |= {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, ops in PATHS.items() for method in ops}
    assert served == documented


def test_openapi_document_is_versioned_and_every_path_is_v1():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    assert all(path.startswith("/v1/") for path in doc["paths"])


def test_the_local_socket_app_does_not_take_node_orders_and_the_tls_app_no_local_join():
    local = {r.resource.canonical for r in build_app(agent=None, node_site=False).router.routes()}
    remote = {r.resource.canonical for r in build_app(agent=None, node_site=True).router.routes()}
    assert "/v1/node/orders" not in local and "/v1/join" not in local
    assert "/v1/cluster/join" not in remote
