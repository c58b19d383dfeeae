"""Detection over imported Atlas traces: compares the diversions a lab run's coordinator
found with those found after its traces went out as Atlas JSON (`tracemesh export
--format atlas`) and came back into an empty store (`tracemesh import --format atlas`),
where every vantage is `atlas:<prb_id>`. Vantage names are mapped back through the
export's probe file (`description` holds the name); everything else must be equal.

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
    bad = 0
    for x, y in zip(o, b):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                bad += 1
                print(f"{x['vantage']} -> {x['target']}: {k} differs:\n  before {json.dumps(x.get(k))}\n  after  {json.dumps(y.get(k))}")
    if orig.get("incidents") != back.get("incidents"):
        bad += 1
        print("incidents differ")
    if bad:
        sys.exit(f"{bad} differences in {len(o)} records")
    print(f"{len(o)} diversion records and {len(orig.get('incidents', []))} incidents: "
          "equal after export as Atlas JSON, a fresh store and re-import")


if __name__ == "__main__":
    main()
