"""Paths that must not carry an IBM bearer past the Quantum API's `/api/`: every encoding of `..`
and `/` a gateway may decode before it resolves dot segments (nginx does), so each, sent under
`/api/`, may reach IAM's key minting (`/v1/apikeys`) or another IBM Cloud API. One table for the
unit tests, the daemon's Forward, the org server's relay and exec sessions."""

from __future__ import annotations

import itertools

TARGET = "/v1/apikeys"  # what each tries to reach: IAM's key minting

# Spellings of '..' and of '/': plain, every case of every escape, partly encoded, double encoded
# (%25 decoded twice), overlong UTF-8 (a lenient decoder's '.' and '/'), full-width forms.
DOTS = ["..", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e", ".%2e", ".%2E", "%2e.", "%2E.", "%252e%252e", "%252E%252E",
        ".%252e", "%c0%ae%c0%ae", "%C0%AE%C0%AE", "%e0%80%ae%e0%80%ae", "%ef%bc%8e%ef%bc%8e", "%u002e%u002e"]
SLASHES = ["%2f", "%2F", "%5c", "%5C", "\\", "%252f", "%252F", "%255c", "%c0%af", "%C0%AF", "%e0%80%af", "%ef%bc%8f"]

REFUSED = [
    # '..' spelled every way, then an encoded separator: one segment to a naive check.
    *(f"/api/{dots}{slash}v1/apikeys" for dots, slash in itertools.product(DOTS, SLASHES)),
    # '..' spelled every way as a segment of its own, in the middle and at the end.
    *(f"/api/{dots}/v1/apikeys" for dots in DOTS),
    *(f"/api/{dots}" for dots in DOTS),
    *(f"/api/x/{dots}/{dots}{TARGET}" for dots in DOTS),
    # Dot segments with parameters (Tomcat's '..;'), encoded ';', trailing spaces, tabs and NULs.
    "/api/..;/v1/apikeys", "/api/..;x=1/v1/apikeys", "/api/.;/..;/v1/apikeys", "/api/..%3b/v1/apikeys",
    "/api/..%3B/v1/apikeys", "/api/...;/v1/apikeys", "/api/;x/../../v1/apikeys", "/api/..%20/v1/apikeys",
    "/api/..%09/v1/apikeys", "/api/..%00/v1/apikeys", "/api/%00/../../v1/apikeys", "/api/...",
    # Empty segments (nginx merges '//' before it resolves '..'), separators encoded in the prefix.
    "/api//../../v1/apikeys", "//api/v1/jobs", "/api/v1//jobs", "/api%2F..%2Fv1/apikeys", "/api%2fv1/jobs",
    "/api%5cv1/jobs",
    # Plain dot segments out of /api/, and paths that never were under it.
    "/api/..", "/api/../v1/apikeys", "/api/v1/../../v1/apikeys", "/api/v1/jobs/../../..", TARGET, "/", "/apikeys",
    "/apix/v1/jobs", "/API/v1/jobs",
    # Malformed escapes: what a lenient decoder makes of them is anyone's guess.
    "/api/%zz/../../v1/apikeys", "/api/%2", "/api/%%32%65%%32%65/v1/apikeys",
]

# The Quantum API's own paths, however spelled, still go: the rule must not break the SDK.
ALLOWED = ["/api/v1/jobs", "/api/v1/jobs/", "/api/v1/backends?include_mocks=True", "/api/v1/backends/ibm_x/configuration",
           "/api/v1/x/../jobs", "/api/v1/./jobs", "/api/v1/jobs/%41b-c_1", "/api/v1/jobs?q=..%2F..%2Fv1"]
