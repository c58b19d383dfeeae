#!/usr/bin/env python3
"""Generates a large version-2 lab scenario for scale runs: by default 50 vantages, 300 routers
and 100 destinations across 30 transit ASes in 60 world cities, with China Telecom PoPs, and the
version-2 features spread over it: every router answers from its incoming interface
(reply_from = "incoming") on links numbered from one side's prefix; link costs are IGP metrics
(whole milliseconds, so equal-cost paths occur) and a share of routers balance over them (ecmp);
about one router in ten is a hidden MPLS LSR; some routers answer slowly (icmp_delay_ms) or
rate-limit ICMP (icmp_rate); long links jitter. Deterministic for a given --seed; prints TOML.

usage: generate_scale_v2.py [--vantages N] [--routers N] [--targets N] [--ases N] [--seed S]
                            [--duration S] [--round S] > scenario.toml

Run it (release binaries):
    python3 scenarios/generate_scale_v2.py > out/scale-v2.toml
    target/release/tracemesh-lab run out/scale-v2.toml --out out/scale-v2 --rate 500
Check it with the oracle first:
    python3 /work/shared/tools/scenario.py out/scale-v2.toml

Diversions: three vantages' first-hop routers (the hand-off `at`, on every branch of their
paths) are linked to a China Telecom PoP (`via[0]`, never hidden) over an expensive link that no
normal path uses. During the event their traffic enters the PoP, crosses CT's hidden core and
leaves through a second PoP. Unlike generate_scale.py's, the diverted paths never loop: the
generator lists in `to` only the targets whose every equal-cost way on from the exit PoP avoids
the hand-off router and the routers already traversed. One benign re-route does the same with a
non-adversary neighbour. Cities are placed at their centres (data-centre districts), never at
airports.
"""
import argparse
import heapq
import math
import random

CITIES = [
    ("Toronto", 43.6446, -79.3849), ("Montreal", 45.5017, -73.5673), ("Vancouver", 49.2827, -123.1207),
    ("New York", 40.7177, -74.0086), ("Chicago", 41.8537, -87.6181), ("Dallas", 32.8007, -96.8196),
    ("Los Angeles", 34.0485, -118.2567), ("San Jose", 37.2422, -121.7816), ("Seattle", 47.6145, -122.3388),
    ("Miami", 25.7823, -80.1930), ("Atlanta", 33.7553, -84.3915), ("Denver", 39.7454, -104.9955),
    ("Ashburn", 39.0166, -77.4591), ("Mexico City", 19.4326, -99.1332), ("Sao Paulo", -23.5505, -46.6333),
    ("Buenos Aires", -34.6037, -58.3816), ("Santiago", -33.4489, -70.6693), ("Bogota", 4.7110, -74.0721),
    ("London", 51.5117, -0.0014), ("Paris", 48.8976, 2.2545), ("Frankfurt", 50.1187, 8.7369),
    ("Amsterdam", 52.3560, 4.9517), ("Madrid", 40.4168, -3.7038), ("Milan", 45.4642, 9.1900),
    ("Stockholm", 59.4036, 17.9447), ("Warsaw", 52.2286, 21.0036), ("Vienna", 48.2082, 16.3738),
    ("Zurich", 47.3769, 8.5417), ("Moscow", 55.6495, 37.5402), ("Istanbul", 41.0082, 28.9784),
    ("Dubai", 25.2048, 55.2708), ("Mumbai", 19.0760, 72.8777), ("Delhi", 28.6139, 77.2090),
    ("Singapore", 1.2945, 103.7877), ("Hong Kong", 22.3193, 114.1694), ("Tokyo", 35.6866, 139.7633),
    ("Osaka", 34.6937, 135.5023), ("Seoul", 37.4784, 126.8818), ("Beijing", 39.9042, 116.4074),
    ("Shanghai", 31.2304, 121.4737), ("Guangzhou", 23.1291, 113.2644), ("Taipei", 25.0330, 121.5654),
    ("Manila", 14.5995, 120.9842), ("Jakarta", -6.2088, 106.8456), ("Bangkok", 13.7563, 100.5018),
    ("Sydney", -33.8688, 151.2093), ("Melbourne", -37.8136, 144.9631), ("Auckland", -36.8485, 174.7633),
    ("Johannesburg", -26.2041, 28.0473), ("Cairo", 30.0444, 31.2357), ("Lagos", 6.5244, 3.3792),
    ("Nairobi", -1.2921, 36.8219), ("Tel Aviv", 32.0853, 34.7818), ("Riyadh", 24.7136, 46.6753),
    ("Karachi", 24.8607, 67.0011), ("Kuala Lumpur", 3.1510, 101.7060), ("Helsinki", 60.1986, 24.9339),
    ("Dublin", 53.3498, -6.2603), ("Lisbon", 38.7223, -9.1393), ("Honolulu", 21.3069, -157.8583),
]
CN = {"Beijing", "Shanghai", "Guangzhou"}
CT = 4134


def km(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))


def dists(adj, src):
    """Least integer cost from src to every router."""
    d, heap = {src: 0}, [(0, src)]
    while heap:
        c, r = heapq.heappop(heap)
        if c > d[r]:
            continue
        for n, w in adj[r]:
            if n not in d or c + w < d[n]:
                d[n] = c + w
                heapq.heappush(heap, (d[n], n))
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vantages", type=int, default=50)
    ap.add_argument("--routers", type=int, default=300)
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--ases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--round", type=float, default=15)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    out = []
    w = out.append
    w("# Generated by scenarios/generate_scale_v2.py: a large synthetic version-2 internet for scale runs.")
    w("version = 2")
    w(f'name = "scale-v2-{a.vantages}v-{a.routers}r-{a.targets}t"')
    w(f'summary = "Synthetic, version 2: {a.vantages} vantages, {a.routers} routers, {a.targets} destinations; '
      'interface addresses, ECMP, hidden LSRs, slow and rate-limited ICMP, jitter; China Telecom diverts three '
      'vantages\' traffic for a while without loops; one benign re-route."')
    w(f"duration_s = {a.duration}")
    w(f"round_s = {a.round}")
    w('protocols = ["icmp"]')
    w(f"adversary_asns = [{CT}]")
    w("")
    for i in range(a.ases):
        w(f'[[as]]\nasn = {64600 + i}\nname = "TRANSIT-{i} Synthetic Transit {i}"\ncountry = "US"\nprefixes = ["20.{i}.0.0/16"]\n')
    w(f'[[as]]\nasn = {CT}\nname = "CHINANET-BACKBONE No.31,Jin-rong Street"\ncountry = "CN"\nprefixes = ["202.97.0.0/19"]\n')

    # Routers: China Telecom in its three cities and a few PoPs abroad, transit ASes elsewhere.
    routers, nxt, ct_n = [], [1] * a.ases, 0
    for i in range(a.routers):
        name, lat, lon = CITIES[i % len(CITIES)] if i < len(CITIES) else rnd.choice(CITIES)
        if name in CN or (i % 37 == 5 and ct_n < 8):
            asn, addr, k = CT, f"202.97.{ct_n // 250}.{ct_n % 250 + 1}", None
            ct_n += 1
        else:
            k = i % a.ases
            asn, addr = 64600 + k, f"20.{k}.255.{nxt[k]}"
            nxt[k] += 1
        routers.append({"name": f"r{i}", "asn": asn, "k": k, "addr": addr, "loc": (lat, lon), "city": name})
    n = len(routers)
    ct = [i for i, r in enumerate(routers) if r["asn"] == CT]
    non_ct = [i for i, r in enumerate(routers) if r["asn"] != CT]

    def delay(i, j):
        return km(routers[i]["loc"], routers[j]["loc"]) * 1.5 / 200 + 0.05

    # Links: each transit router to its 3 nearest transit routers, a few long-haul ones, and
    # components joined; CT routers form their own backbone and peer expensively.
    links = {}

    def link(i, j, cost=None):
        key = (min(i, j), max(i, j))
        if i != j and key not in links:
            links[key] = cost if cost is not None else max(1, round(delay(i, j)))

    for i in non_ct:
        near = sorted((km(routers[i]["loc"], routers[j]["loc"]), j) for j in non_ct if j != i)
        for _, j in near[:3]:
            link(i, j)
    for _ in range(a.routers // 5):
        i, j = rnd.sample(non_ct, 2)
        link(i, j)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in links:
        parent[find(i)] = find(j)
    roots = sorted({find(i) for i in non_ct})
    for r1, r2 in zip(roots, roots[1:]):
        link(r1, r2)
        parent[find(r1)] = find(r2)
    # China Telecom: two hidden cores (the first two CT routers in China), every other CT router
    # linked to both; each CT router peers with its nearest transit router at cost 300.
    cores = [i for i in ct if routers[i]["city"] in CN][:2]
    for i in ct:
        for c in cores:
            link(i, c, max(1, round(delay(i, c))) + 20)
        j = min(non_ct, key=lambda j: (km(routers[i]["loc"], routers[j]["loc"]), j))
        link(i, j, 300)
    hidden = set(cores)

    vant_r = [non_ct[(k * 7) % len(non_ct)] for k in range(a.vantages)]
    targ_r = [non_ct[(k * 11 + 3) % len(non_ct)] for k in range(a.targets)]
    endpoints = set(vant_r) | set(targ_r)
    pops = [i for i in ct if i not in cores]
    # Hand-offs: three vantage routers, each linked to a CT PoP (its ingress) at cost 400.
    events, extra = [], []
    hand = []
    for k in range(min(3, a.vantages)):
        at, pop = vant_r[k], pops[k % len(pops)]
        link(at, pop, 400)
        hand.append((k, at, pop, pops[(k + 1) % len(pops)]))
    # Hidden LSRs: one transit router in ten that is no endpoint and no CT neighbour.
    ct_nb = {i for (i, j) in links if j in ct} | {j for (i, j) in links if i in ct}
    for i in non_ct:
        if i not in endpoints and i not in ct_nb and rnd.random() < 0.1:
            hidden.add(i)
    ecmp = {i for i in non_ct if i not in hidden and rnd.random() < 0.06}

    adj = {i: [] for i in range(n)}
    for (i, j), c in links.items():
        adj[i].append((j, c))
        adj[j].append((i, c))
    dist = {}

    def d_to(t):
        if t not in dist:
            dist[t] = dists(adj, t)
        return dist[t]

    def on_shortest(s, t):
        """Routers on some least-cost path from s to t."""
        ds, dt = d_to(s), d_to(t)
        return {x for x in range(n) if x in ds and x in dt and ds[x] + dt[x] == ds[t]}

    for k, at, pop, exit_pop in hand:
        via = [pop, cores[0], exit_pop]
        ok = [f"t{m}" for m, tr in enumerate(targ_r)
              if not (on_shortest(exit_pop, tr) & ({at} | set(via[:2])))]
        if ok:
            events.append(("diversion", k, at, via, ok))
    # A benign re-route: the fourth vantage's router sends traffic to a transit neighbour.
    if a.vantages > 3:
        at = vant_r[3]
        nb = sorted(j for j, _ in adj[at] if j not in ct)
        if nb:
            via = [nb[-1]]
            ok = [f"t{m}" for m, tr in enumerate(targ_r) if tr != at and at not in on_shortest(via[0], tr)]
            if ok:
                events.append(("reroute", 3, at, via, ok))

    # Routers.
    for i, r in enumerate(routers):
        w("[[router]]")
        w(f'name = "{r["name"]}"\nasn = {r["asn"]}\naddr = "{r["addr"]}"\nloc = [{r["loc"][0]}, {r["loc"][1]}]\ncity = "{r["city"]}"')
        if i in hidden:
            w("hidden = true")
        else:
            w('reply_from = "incoming"')
            if i in ecmp:
                w("ecmp = true")
            x = rnd.random()
            if r["asn"] == CT or x < 0.2:
                w(f"icmp_delay_ms = [{round(rnd.uniform(0, 1), 1)}, {round(rnd.uniform(2, 12), 1)}]")
            if x > 0.95 or (r["asn"] == CT and x > 0.5):
                w(f"icmp_rate = {rnd.choice([5, 10, 20, 50])}")
        w("")
    # Links, numbered from one side's prefix (CT's for its own links and peerings).
    lk = [0] * a.ases
    ct_lk = 0
    for (i, j), c in sorted(links.items()):
        ri, rj = routers[i], routers[j]
        side = ri if (ri["asn"] == CT or (rj["asn"] != CT and rnd.random() < 0.5)) else rj
        if side["asn"] == CT:
            base = (ct_lk // 64, (ct_lk % 64) * 4)
            pre = f"202.97.{16 + base[0]}.{base[1]}"
            ct_lk += 1
        else:
            q = side["k"]
            pre = f"20.{q}.{128 + lk[q] // 64}.{(lk[q] % 64) * 4}"
            lk[q] += 1
        p = pre.rsplit(".", 1)
        w(f'[[link]]\na = "r{i}"\nb = "r{j}"\ncost = {c}')
        w(f'addr_a = "{p[0]}.{int(p[1]) + 1}"\naddr_b = "{p[0]}.{int(p[1]) + 2}"')
        dl = delay(i, j)
        if dl > 20:
            w(f"jitter_ms = {round(min(3.0, dl / 40), 2)}")
        w("")
    for k in range(a.vantages):
        i = vant_r[k]
        r = routers[i]
        w(f'[[vantage]]\nname = "v{k}"\nrouter = "r{i}"\naddr = "20.{r["k"]}.{100 + k // 250}.{k % 250 + 2}"')
        w(f'loc = [{r["loc"][0]}, {r["loc"][1]}]\ncity = "{r["city"]}"\ncountry = "US"\nasn = {r["asn"]}\n')
    for k in range(a.targets):
        i = targ_r[k]
        w(f'[[target]]\nname = "t{k}"\nprefix = "20.{routers[i]["k"]}.{200 + k // 64}.{(k % 64) * 4}/30"\nrouter = "r{i}"\n')
    start, end = round(a.duration * 0.3 + 2, 1), round(a.duration * 0.75 + 3, 1)
    for kind, k, at, via, to in events:
        w(f'[[event]]\nkind = "{kind}"')
        w(f"start_s = {start if kind == 'diversion' else round(a.duration * 0.2 + 3, 1)}")
        w(f"end_s = {end if kind == 'diversion' else round(a.duration * 0.6 + 2, 1)}")
        w(f'from = ["v{k}"]\nto = [{", ".join(chr(34) + t + chr(34) for t in to)}]\nat = "r{at}"')
        w(f'via = [{", ".join(chr(34) + "r" + str(v) + chr(34) for v in via)}]')
        if kind == "diversion":
            w(f"adversary_asn = {CT}")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
