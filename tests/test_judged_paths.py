"""Paths judged as servers resolve them (common/url.resolved_path), and IBM's bearer rule on them.
In-process: the daemon, the org server's relay and exec sessions run the same rule (their tests
send the same table through real processes)."""

from __future__ import annotations

import pytest
from qpu_broker.common.url import parse_url, remove_dot_segments, resolved_path
from qpu_broker.providers.ibm import Ibm

from testsupport.path_encodings import ALLOWED, DOTS, REFUSED, SLASHES

QUANTUM = "quantum.cloud.ibm.com"


def _urls(host: str, path: str):
    """The URL as Forward parses it (normalised, as sent) and as given (Sign's verbatim parse)."""
    return [parse_url(f"https://{host}{path}", "the URL"), parse_url(f"https://{host}{path}", "the URL", verbatim=True)]


@pytest.mark.parametrize("path", REFUSED)
def test_no_spelling_of_dot_dot_or_slash_takes_an_ibm_bearer_out_of_the_quantum_api(path):
    for url in _urls(QUANTUM, path):
        assert not Ibm().bearer_allowed(QUANTUM, "POST", url), (path, url.path)


@pytest.mark.parametrize("path", ALLOWED)
def test_the_quantum_apis_own_paths_still_go(path):
    for url in _urls(QUANTUM, path):
        assert Ibm().bearer_allowed(QUANTUM, "GET", url), (path, url.path)


def test_the_table_has_every_escape_of_dot_and_slash_in_every_case():
    escapes = {e.lower() for spelling in DOTS + SLASHES for e in spelling.split("%")[1:]}
    assert {"2e", "2f", "5c", "252e", "252f", "c0", "ae", "af"} <= {e[:2] if e[:2] != "25" else e[:4] for e in escapes}
    for escape in ("%2e", "%2f", "%5c"):
        spelled = [p for p in REFUSED if escape in p.lower()]
        assert any(escape in p for p in spelled) and any(escape.upper() in p for p in spelled), escape


@pytest.mark.parametrize(("given", "resolved"), [
    # RFC 3986 5.4's examples, as absolute paths, and the edges of 5.2.4.
    ("/a/b/c/./../../g", "/a/g"), ("/b/c/d;p/../g", "/b/c/g"), ("/b/c/d;p/./", "/b/c/d;p/"), ("/a/..", "/"),
    ("/..", "/"), ("/../..", "/"), ("/a/b/.", "/a/b/"), ("/.", "/"), ("/a/./b", "/a/b"), ("", "/"), ("/", "/"),
    ("/a/.../b", "/a/.../b"), ("/a/b..", "/a/b.."),
])
def test_dot_segments_are_removed_as_rfc_3986_says(given, resolved):
    assert remove_dot_segments(given) == resolved


@pytest.mark.parametrize(("given", "resolved"), [
    ("/api/v1/jobs", "/api/v1/jobs"), ("/api/v1/%6Aobs", "/api/v1/jobs"), ("/api/x/../v1", "/api/v1"),
    ("/api/v1/job.json", "/api/v1/job.json"), ("/api/v1/a..b", "/api/v1/a..b"), ("/api/v1/x;y=1", "/api/v1/x;y=1"),
    ("/api/v1/jobs/", "/api/v1/jobs/"),
    ("/api/%2e%2e", None), ("/api/..%2F", None), ("/api/%5c", None), ("/api/%252e", None), ("/api/%25", None),
    ("/api/%c0%ae", None), ("/api/%C3%A9", None), ("/api/é", None), ("/api/%00", None), ("/api/%7f", None),
    ("/api/%20", None), ("/api/a b", None), ("/api/\\", None), ("/api//v1", None), ("/api/..;/v1", None),
    ("/api/.;/v1", None), ("/api/;/v1", None), ("/api/.../v1", None), ("/api/%zz", None), ("/api/%2", None),
])
def test_resolved_path_decodes_resolves_and_refuses_what_servers_read_two_ways(given, resolved):
    assert resolved_path(given) == resolved


def test_global_search_and_catalog_take_the_sdks_lookups_only_however_spelled():
    search, catalog = "api.global-search-tagging.cloud.ibm.com", "globalcatalog.cloud.ibm.com"
    ibm = Ibm()
    for host, method, path in ((search, "POST", "/v3/resources/search?limit=100"), (catalog, "GET", "/api/v1/plan-id")):
        assert all(ibm.bearer_allowed(host, method, url) for url in _urls(host, path))
    for host, method, path in ((search, "POST", "/v3/resources/search/..%2F..%2Ftags/attach"),
                               (search, "POST", "/v3/resources/search%2F..%2F..%2Ftags"),
                               (search, "POST", "/v3/resources/search/%2e%2e%2f%2e%2e%2ftags"), (search, "GET", "/v3/resources/search"),
                               (catalog, "GET", "/api/v1/%2e%2e"), (catalog, "GET", "/api/v1/x%2F..%2F..%2Fv2"),
                               (catalog, "GET", "/api/v1/x/..;/y"), (catalog, "DELETE", "/api/v1/plan-id")):
        for url in _urls(host, path):
            assert not ibm.bearer_allowed(host, method, url), (host, path)
