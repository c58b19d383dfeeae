"""Detection over imported Atlas traces: compares the diversions a lab run's coordinator
found with those found after its traces went out as Atlas JSON (`tracemesh export
--format atlas`) and came back into an empty store (`tracemesh import --format atlas`),
where every vantage is `atlas:<prb_id>`. Vantage names are mapped back through the
export's probe file (`description` holds the name); everything else must be equal,
except what the lab coordinator's alias results feed: Atlas JSON carries traces, not
alias results, so echo RTTs (the detector's best RTT per vantage and router,
`Detector::observe_echo`: the normal path's per-hop best RTTs, the ingress position's
constraints, radius, position and the city nearest it) and alias sets (`ingress.router`, and an
`ingress.owner_rule` of `alias-group` before, with the `max_rtt_jump_ms` measured from
the hop that rule picked) may differ. Nor does it carry the agent mesh's one-way delays
(issue 12), so a record's `direction` and `mesh` evidence, fed by mesh samples, may be
gone after the trip. Those differences are listed, not failed; everything else (who,
where, when, which routers, AS paths) must be equal.

usage: atlas_roundtrip.py ORIGINAL_DIVERSIONS_JSON REIMPORTED_DIVERSIONS_JSON PROBES_JSON
"""
import json
import sys


def main():
    orig = json.load(open(sys.argv[1]))
    back = json.load(open(sys.argv[2]))
    names = {f"atlas:{p['id']}": p["description"] for p in json.load(open(sys.argv[3]))["objects"]}

    def rename(doc):
        for d in doc["diversions"]:
            d["vantage"] = names.get(d["vantage"], d["vantage"])
        for i in doc.get("incidents", []):
            i["vantages"] = [names.get(v, v) for v in i["vantages"]]
        return doc

    back = rename(back)
    o, b = orig["diversions"], back["diversions"]
    if len(o) != len(b):
        sys.exit(f"{len(o)} diversion records before, {len(b)} after the Atlas round trip")
    echo_fed = 0
    mesh_fed = 0

    def strip(d):
        """The record without the fields echo RTTs and mesh samples feed; returns them
        apart (mesh-fed keys are prefixed `mesh:`)."""
        d = json.loads(json.dumps(d))
        fed = {}
        for k in ("direction", "mesh"):
            fed[f"mesh:{k}"] = d.pop(k, None)
        ing = d.get("ingress", {})
        # The city named is the one nearest the position, so it follows `loc`.
        for k in ("loc", "radius_km", "constraints", "router", "city", "city_country"):
            fed[f"ingress.{k}"] = ing.pop(k, None)
        fed["ingress.owner_rule"] = ing.get("owner_rule")
        for h in d.get("evidence", {}).get("normal_path", []):
            fed[f"normal_path[ttl {h['ttl']}].rtt_ms"] = h.pop("rtt_ms", None)
        return d, fed

    bad = 0
    for x, y in zip(o, b):
        (xs, xf), (ys, yf) = strip(x), strip(y)
        # Only alias knowledge the original had may be missing: an owner rule other
        # than alias-group before must be the same after.
        if xf["ingress.owner_rule"] == "alias-group":
            xs["ingress"].pop("owner_rule", None)
            ys["ingress"].pop("owner_rule", None)
            # The RTT jump is measured from the ingress hop on, and which hop that is
            # follows the owner rule.
            for d, f in ((xs, xf), (ys, yf)):
                f["evidence.max_rtt_jump_ms"] = d["evidence"].pop("max_rtt_jump_ms", None)
        else:
            xf.pop("ingress.owner_rule")
            yf.pop("ingress.owner_rule")
        for k in sorted(set(xs) | set(ys)):
            if xs.get(k) != ys.get(k):
                bad += 1
                print(f"{x['vantage']} -> {x['target']}: {k} differs:\n  before {json.dumps(xs.get(k))}\n  after  {json.dumps(ys.get(k))}")
        for k in sorted(set(xf) | set(yf)):
            if xf.get(k) == yf.get(k):
                continue
            if k.startswith("mesh:"):
                mesh_fed += 1
                # Only what the mesh added may be missing; never a different value.
                if yf.get(k) is not None:
                    bad += 1
                    print(f"{x['vantage']} -> {x['target']}: {k[5:]} differs: {json.dumps(xf.get(k))} -> {json.dumps(yf.get(k))}")
                else:
                    print(f"{x['vantage']} -> {x['target']}: {k[5:]} {json.dumps(xf.get(k))} -> none (fed by mesh samples, not in Atlas JSON)")
                continue
            echo_fed += 1
            print(f"{x['vantage']} -> {x['target']}: {k} {xf.get(k)} -> {yf.get(k)} (fed by alias results, not in Atlas JSON)")

    fed_inc = ("ingress_loc", "ingress_city")

    def inc(doc):
        return [{k: v for k, v in i.items() if k not in fed_inc} for i in doc.get("incidents", [])]

    if inc(orig) != inc(back):
        bad += 1
        print("incidents differ")
    for i, j in zip(orig.get("incidents", []), back.get("incidents", [])):
        for k in fed_inc:
            if i.get(k) != j.get(k):
                echo_fed += 1
                print(f"incident {i.get('id')}: {k} {json.dumps(i.get(k))} -> {json.dumps(j.get(k))} (fed by alias results, not in Atlas JSON)")
    if bad:
        sys.exit(f"{bad} differences in {len(o)} records")
    print(f"{len(o)} diversion records and {len(orig.get('incidents', []))} incidents: "
          "equal after export as Atlas JSON, a fresh store and re-import "
          f"({echo_fed} values fed by alias results and {mesh_fed} fed by mesh samples differ, listed above)")


if __name__ == "__main__":
    main()
