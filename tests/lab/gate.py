#!/usr/bin/env python3
"""Fails when a lab run's score (score.py --json) is below the detection targets:
recall and precision >= 0.99, ingress router >= 0.99, hand-off router >= 0.95, adversary
AS right >= 0.99, ingress position median <= 100 km and p90 <= 500 km, onset <= one
round. A scenario with no diversion at all (a quiet day) must get no report.

usage: gate.py SCORE_JSON SCENARIO_TOML"""
import json
import sys
import tomllib

s = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    round_s = float(tomllib.load(f)["round_s"])
if s.get("expected", 0) == 0:
    checks = [("reported", s.get("reported", 1) == 0)]
else:
    checks = [
        ("recall", s.get("recall", 0) >= 0.99),
        ("precision", s.get("precision", 0) >= 0.99),
        ("ingress_addr", s.get("ingress_addr", 0) >= 0.99),
        ("handoff_addr", s.get("handoff_addr", 0) >= 0.95),
        ("adversary_asn", s.get("adversary_asn", 0) >= 0.99),
        ("ingress_km_median", s.get("ingress_km_median", 1e9) <= 100),
        ("ingress_km_p90", s.get("ingress_km_p90", 1e9) <= 500),
    ]
    if round_s:
        checks.append(("onset_s_median", s.get("onset_s_median", 1e9) <= round_s))
failed = [name for name, ok in checks if not ok]
print(f"{sys.argv[1]}: " + ", ".join(f"{n}={s.get(n)}" for n, _ in checks))
if failed:
    sys.exit(f"error: below target: {', '.join(failed)}")
