#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seeds built from the field cases in
../shared/cases (which stay where they are), the error corpora beside the tests,
and a few request bodies.

Usage: fuzz/seed.py [CASES_DIR]   (default: <repo>/../shared/cases)
"""
import hashlib
import json
import pathlib
import sys

fuzz = pathlib.Path(__file__).resolve().parent
cases = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else fuzz.parent.parent / "shared" / "cases"
corpus = fuzz / "corpus"


def seed(target, data):
    if isinstance(data, str):
        data = data.encode()
    out = corpus / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


providers = {"hetzner": 0, "scaleway": 1, "gcp": 2, "gcp-compute": 2}
for case in json.loads((cases / "provider-errors.json").read_text()):
    status = case["http_status"] or 0
    head = bytes([providers[case["provider"]]]) + status.to_bytes(2, "big")
    seed("classify_http_error", head + case["body"].encode())
    seed("classify_agent_error", case["body"])
    seed("classify_agent_error", case["note"])

# The error corpora beside the tests: every text seeds the extraction step, the
# model-provider texts the agent classifier, the provider texts the HTTP classifier.
repo = fuzz.parent
for corpus_file, provider_target in [
    (repo / "sam-core" / "tests" / "corpus" / "model-errors.json", None),
    (repo / "sam-providers" / "tests" / "corpus" / "provider-errors.json", "classify_http_error"),
]:
    for case in json.loads(corpus_file.read_text()):
        seed("signal_extract", case["text"])
        if provider_target is None:
            seed("classify_agent_error", case["text"])
        else:
            status = case["status"] or 0
            head = bytes([providers[case["provider"]]]) + status.to_bytes(2, "big")
            seed(provider_target, head + case["text"].encode())

for path in sorted((cases / "devcontainer").glob("*.json")):
    seed("devcontainer", path.read_bytes())

lines = [json.loads(l) for l in (cases / "acp-transcript.jsonl").read_text().splitlines() if l.strip()]
agent = [json.dumps(l["message"]) for l in lines if l["direction"] == "agent->client"]
seed("acp_messages", "\n".join(agent) + "\n")
for message in agent:
    seed("acp_messages", message + "\n")

for body in [
    {"repo": "https://github.com/example/repo.git", "prompt": "fix the flaky test"},
    {"repo": "/tmp/repo", "prompt": "x", "agent": "demo", "size": "large",
     "location": "fsn1", "provider": "fake", "workspace_profile": "lightweight",
     "requirements": {"vcpus": 2, "memory_gb": 4}},
    {"repo": "r", "prompt": "p", "devcontainer": "python", "branch": "main"},
    {"repo": "https://github.com/acme/widgets.git", "prompt": "p", "user": "u-1",
     "github": {"installation": 4242, "pull_request": "open"}},
]:
    seed("server_bodies", b"\x00" + json.dumps(body).encode())
for query in ["status=queued,in_progress&limit=10", "after=t-0000000000000001", "limit=0"]:
    seed("server_bodies", b"\x01" + query.encode())
# The callbacks: one byte choosing the route (0 node ready, 1 heartbeat, 2 workspace
# ready, 3 session event, 4 boot failed), then a body as the VM agent (or the boot
# script) sends it.
for route, body in [
    (0, {"version": "0.1.0", "boot": {"phases": [], "complete": True}}),
    (1, {"metrics": {"cpu_load_avg1": 0.5, "memory_percent": 40.0, "disk_percent": 10.0}}),
    (2, {"state": "ready", "effective_profile": "full", "recovery": False}),
    (2, {"state": "failed", "error": {"category": "invalid_config", "message": "no such repo"}}),
    (3, {"kind": "report", "state": "running"}),
    (3, {"kind": "report", "state": "stopped", "reason": "end_turn", "last_message": "Done."}),
    (3, {"kind": "output", "branch": "sam/x-1", "commit": "abc", "pull_request_url": None}),
    (4, {"event": "boot_failed", "phase": "packages", "exit_status": 100, "journal": [
        {"__REALTIME_TIMESTAMP": "1765000000000000", "SYSLOG_IDENTIFIER": "sam-boot",
         "MESSAGE": "PHASE START: packages"},
        {"__REALTIME_TIMESTAMP": "1765000030000000", "SYSLOG_IDENTIFIER": "sam-boot",
         "MESSAGE": "PHASE FAILED: packages (exit 100)"},
    ]}),
]:
    seed("callback_bodies", bytes([route]) + json.dumps(body).encode())
print(f"seeded {corpus}")
