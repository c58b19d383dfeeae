#!/usr/bin/env python3
"""Derive coordinator/data/cities.tsv from the `airportsdata` PyPI package (MIT).

    pip download airportsdata --no-deps -d /tmp/apd
    unzip -o /tmp/apd/airportsdata-*.whl -d /tmp/apd/x
    python3 derive_gazetteer.py /tmp/apd/x/airportsdata/airports.csv > cities.tsv

Only airports with an IATA code are kept (these are the ones that name the cities
where routers live), one row per (city, country): the point of the gazetteer is to
name the city nearest to an estimated position, not to list airports. Where a city
has several airports, the city's position is the mean of those within 60 km of its
"International" one (so London sits in London, not at Luton).

`airports` = IATA airports within 50 km of the city's reference airport: a crude but
license-clean proxy for how big a metro is, which is where networks put points of
presence (the detector uses it as a prior when RTTs leave a wide region, as Octant
used population density).
"""
import csv
import math
import sys
from collections import defaultdict


def km(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))


def main(path):
    best = {}
    grid = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row["iata"]:
                continue
            pos = (float(row["lat"]), float(row["lon"]))
            grid[(math.floor(pos[0]), math.floor(pos[1]))].append(pos)
            if not row["city"] or "\t" in row["city"]:
                continue
            key = (row["city"], row["country"])
            score = 1 if "International" in row["name"] else 0
            if key not in best or score > best[key][0]:
                best[key] = (score, row, best.get(key, (0, None, []))[2])
            best[key][2].append(pos)
    out = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
    out.writerow(["city", "country", "iata", "lat", "lon", "airports"])
    for (city, cc), (_, row, members) in sorted(best.items()):
        ref = (float(row["lat"]), float(row["lon"]))
        close = [p for p in members if km(ref, p) <= 60.0]
        pos = (sum(p[0] for p in close) / len(close), sum(p[1] for p in close) / len(close))
        gy, gx = math.floor(pos[0]), math.floor(pos[1])
        near = sum(1 for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   for p in grid[(gy + dy, (gx + dx + 180) % 360 - 180)] if km(pos, p) <= 50.0)
        out.writerow([city, cc, row["iata"], f"{pos[0]:.4f}", f"{pos[1]:.4f}", near])


if __name__ == "__main__":
    main(sys.argv[1])
