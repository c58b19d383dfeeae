// tracemesh's HTML report: draws the map view (`detect::MapView`, embedded as JSON) with
// the vendored d3-geo and topojson-client. Everything it needs is in the page; it makes
// no request. Hop tables and timelines are built when opened, so that reports with
// thousands of pairs load quickly.
(function () {
  'use strict';
  const SVG = 'http://www.w3.org/2000/svg';
  const D = JSON.parse(document.getElementById('tm-data').textContent);
  const world = JSON.parse(document.getElementById('tm-world').textContent);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  }
  function sv(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  function title(e, text) {
    sv('title', {}, e).textContent = text;
    return e;
  }
  const utc = (s) => new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const asLabel = (asn) => D.as_labels[asn] || 'AS' + asn;
  const ms = (v) => (v === null || v === undefined ? '' : v.toFixed(2) + ' ms');
  const lonlat = (p) => [p[1], p[0]];
  const km = (rttMs) => rttMs * 100; // geo::rtt_radius_km: 100 km per ms of RTT

  const vantages = new Map(D.vantages.map((v) => [v.name, v]));
  const byIncident = new Map(D.incidents.map((i) => [i.id, []]));
  for (const r of D.diversions) {
    if (!byIncident.has(r.incident)) byIncident.set(r.incident, []);
    byIncident.get(r.incident).push(r);
  }
  // One drawing per (vantage, target): its latest episode.
  const pairs = new Map();
  for (const r of D.diversions) {
    const k = r.vantage + '\u2192' + r.target;
    const seen = pairs.get(k);
    if (!seen || r.last_round > seen.last_round) pairs.set(k, r);
  }

  // A path's points: the vantage, then each located hop in TTL order (the ingress at the
  // report's own estimate of it).
  function coords(r, hops) {
    const pts = [];
    const v = vantages.get(r.vantage);
    if (v && v.loc) pts.push(lonlat(v.loc));
    for (const h of hops) {
      if (!h.addr) continue;
      let p = null;
      if (h.addr === r.ingress.addr && r.ingress.loc) p = r.ingress.loc;
      else if (D.located[h.addr]) p = D.located[h.addr].loc;
      if (!p) continue;
      const q = lonlat(p);
      const last = pts[pts.length - 1];
      if (!last || last[0] !== q[0] || last[1] !== q[1]) pts.push(q);
    }
    return pts;
  }

  // ---- summary
  const summary = document.getElementById('summary');
  const adv = [...D.adversary.asns.map(asLabel), ...D.adversary.countries.map((c) => 'ASes of ' + c)];
  summary.textContent =
    D.diversions.length + ' diverted (vantage, target) episode(s) in ' + D.incidents.length +
    ' incident(s), ' + pairs.size + ' pair(s), ' +
    (document.getElementById('tm-live') ? 'live detection' : 'from ' + D.traces + ' traces') + '; adversary: ' +
    (adv.join(', ') || 'none') + '; as of ' + utc(D.generated) + '.';

  // ---- map
  const W = 1200, H = 620;
  const svg = sv('svg', { id: 'map', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
  document.getElementById('map-box').appendChild(svg);
  const projection = d3.geoNaturalEarth1();
  const drawn = [];
  for (const v of D.vantages) if (v.loc) drawn.push(lonlat(v.loc));
  for (const i of D.incidents) if (i.ingress_loc) drawn.push(lonlat(i.ingress_loc));
  for (const r of pairs.values()) drawn.push(...coords(r, r.evidence.diverted_path));
  // Centre the map away from the widest empty band of longitudes, so that paths across
  // the Pacific are not cut at the map's edge.
  const lons = [...new Set(drawn.map((p) => ((p[0] % 360) + 540) % 360 - 180))].sort((a, b) => a - b);
  if (lons.length > 1) {
    let gap = 360 - (lons[lons.length - 1] - lons[0]), at = lons[lons.length - 1] + gap / 2;
    for (let k = 1; k < lons.length; k++) {
      if (lons[k] - lons[k - 1] > gap) { gap = lons[k] - lons[k - 1]; at = lons[k - 1] + gap / 2; }
    }
    projection.rotate([-(at + 180), 0]);
  } else if (lons.length === 1) projection.rotate([-lons[0], 0]);
  projection.fitExtent([[10, 10], [W - 10, H - 10]], { type: 'Sphere' });
  // Zoom on what is drawn (at most 6x), keeping the world around it.
  if (drawn.length > 0) {
    const px = drawn.map((p) => projection(p)).filter((p) => p && isFinite(p[0]) && isFinite(p[1]));
    if (px.length > 0) {
      const xs = px.map((p) => p[0]), ys = px.map((p) => p[1]);
      // Folds, not spreads: tens of thousands of points exceed an argument list.
      const lo = (a) => a.reduce((m, v) => (v < m ? v : m), Infinity);
      const hi = (a) => a.reduce((m, v) => (v > m ? v : m), -Infinity);
      const x0 = lo(xs), x1 = hi(xs), y0 = lo(ys), y1 = hi(ys);
      const zoom = Math.max(1, Math.min(6, W / ((x1 - x0) * 1.4 + 1), H / ((y1 - y0) * 1.4 + 1)));
      const [tx, ty] = projection.translate();
      const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
      projection.scale(projection.scale() * zoom)
        .translate([W / 2 - zoom * (cx - tx), H / 2 - zoom * (cy - ty)]);
    }
  }
  const path = d3.geoPath(projection);
  sv('path', { class: 'sphere', d: path({ type: 'Sphere' }) }, svg);
  sv('path', { class: 'graticule', d: path(d3.geoGraticule10()) }, svg);
  sv('path', { class: 'land', d: path(topojson.feature(world, world.objects.countries)) }, svg);

  const gUnc = sv('g', { id: 'uncertainty' }, svg);
  const gNormal = sv('g', { id: 'normal-paths' }, svg);
  const gDiv = sv('g', { id: 'diverted-paths' }, svg);
  const gHops = sv('g', { id: 'hops' }, svg);
  const gHand = sv('g', { id: 'handoffs' }, svg);
  const gIng = sv('g', { id: 'ingresses' }, svg);
  const gVan = sv('g', { id: 'vantages' }, svg);

  for (const i of D.incidents) {
    const r = (byIncident.get(i.id) || [])[0];
    if (!i.ingress_loc || !r || !r.ingress.radius_km) continue;
    const circle = d3.geoCircle().center(lonlat(i.ingress_loc)).radius(r.ingress.radius_km / 111.195)();
    // A region of continental size would tint the whole map: outline only.
    const cls = r.ingress.radius_km > 1500 ? 'uncertainty wide' : 'uncertainty';
    title(sv('path', { class: cls, 'data-incident': i.id, d: path(circle) || '' }, gUnc),
      'incident ' + i.id + ': ingress ' + i.ingress + ' within ' + r.ingress.radius_km + ' km');
  }
  let undrawn = 0;
  const hopDots = new Set();
  const normalDone = new Set();
  for (const [k, r] of pairs) {
    const dv = coords(r, r.evidence.diverted_path);
    const nv = coords(r, r.evidence.normal_path);
    const nk = r.vantage + '|' + r.target + '|' + nv.join(';');
    if (nv.length >= 2 && !normalDone.has(nk)) {
      normalDone.add(nk);
      const d = path({ type: 'LineString', coordinates: nv });
      if (d) title(sv('path', { class: 'normal', 'data-pair': k, 'data-incident': r.incident, d: d }, gNormal),
        k + ': normal path');
    }
    const d = dv.length >= 2 ? path({ type: 'LineString', coordinates: dv }) : null;
    if (!d) { undrawn += 1; continue; }
    title(sv('path', { class: 'diverted', 'data-pair': k, 'data-incident': r.incident, d: d }, gDiv),
      k + ': diverted through ' + asLabel(r.adversary_asn) + ' at ' + r.ingress.addr +
      ', rounds ' + r.first_round + '..' + r.last_round);
    for (const h of r.evidence.diverted_path.concat(r.evidence.normal_path)) {
      if (!h.addr || hopDots.has(h.addr) || !D.located[h.addr] || h.addr === r.ingress.addr) continue;
      hopDots.add(h.addr);
      const p = projection(lonlat(D.located[h.addr].loc));
      if (!p) continue;
      const loc = D.located[h.addr];
      title(sv('circle', { class: 'hop', cx: p[0], cy: p[1], r: 1.8 }, gHops),
        h.addr + (h.asn ? ' ' + asLabel(h.asn) : '') + (loc.city ? ', near ' + loc.city : '') +
        ' (\u00b1' + loc.radius_km + ' km)');
    }
  }
  const handDone = new Set();
  for (const r of D.diversions) {
    const a = r.handoff.addr;
    if (!a || handDone.has(a) || !D.located[a]) continue;
    handDone.add(a);
    const p = projection(lonlat(D.located[a].loc));
    if (!p) continue;
    const s = 6;
    title(sv('path', {
      class: 'handoff', 'data-addr': a,
      d: 'M' + p[0] + ',' + (p[1] - s) + 'L' + (p[0] + s) + ',' + p[1] + 'L' + p[0] + ',' + (p[1] + s) +
        'L' + (p[0] - s) + ',' + p[1] + 'Z',
    }, gHand), 'hand-off ' + a + (r.handoff.asn ? ' ' + asLabel(r.handoff.asn) : '') + ' (' + r.handoff.method + ')');
  }
  // An ingress that never answered has no RTT of its own: it is drawn one link away,
  // at its hand-off (else the first located hop after it), dashed.
  function ingressPoint(i) {
    if (i.ingress_loc) return { at: i.ingress_loc, approx: false };
    for (const r of byIncident.get(i.id) || []) {
      if (r.handoff.addr && D.located[r.handoff.addr]) return { at: D.located[r.handoff.addr].loc, approx: true };
    }
    for (const r of byIncident.get(i.id) || []) {
      const after = r.evidence.diverted_path.find((h) =>
        h.addr && D.located[h.addr] && (r.handoff.ttl == null || h.ttl > r.handoff.ttl));
      if (after) return { at: D.located[after.addr].loc, approx: true };
    }
    return null;
  }
  for (const i of D.incidents) {
    const where = ingressPoint(i);
    if (!where) continue;
    const p = projection(lonlat(where.at));
    if (!p) continue;
    title(sv('circle', {
      class: where.approx ? 'ingress approx' : 'ingress', 'data-incident': i.id, cx: p[0], cy: p[1], r: 6,
    }, gIng),
      'incident ' + i.id + ': ingress ' + i.ingress + ' of ' + asLabel(i.adversary_asn) +
      (where.approx ? ' (never answered: drawn next to its hand-off)' : (i.ingress_city ? ' near ' + i.ingress_city : '')));
    const t = sv('text', { class: 'label', x: p[0] + 8, y: p[1] - 8 }, gIng);
    t.textContent = '#' + i.id + ' ' + i.ingress;
  }
  for (const v of D.vantages) {
    if (!v.loc) continue;
    const p = projection(lonlat(v.loc));
    if (!p) continue;
    title(sv('circle', { class: 'vantage', 'data-vantage': v.name, cx: p[0], cy: p[1], r: 4.5 }, gVan),
      v.name + (v.country ? ' (' + v.country + ')' : '') + (v.asn ? ' AS' + v.asn : ''));
    if (D.vantages.length <= 60) {
      const t = sv('text', { class: 'label', x: p[0] + 6, y: p[1] + 4 }, gVan);
      t.textContent = v.name;
    }
  }
  if (undrawn > 0) {
    document.getElementById('undrawn').textContent =
      undrawn + ' diverted pair(s) have no located vantage or hop and are not drawn.';
  }

  // ---- incidents
  function recordLine(r) {
    const h = r.handoff.addr ? 'hand-off ' + r.handoff.addr + ' (' + r.handoff.method + ')' : 'hand-off unknown';
    return r.vantage + ' \u2192 ' + r.target + ': rounds ' + r.first_round + '..' + r.last_round +
      ' (' + r.rounds + ' diverted)' + (r.active ? ', active' : '') + ', ' + h;
  }
  function evidence(r) {
    const ev = r.evidence;
    const asPath = (p) => p.map((a) => 'AS' + a).join(' ');
    const out = el('div', { class: 'evidence' });
    const line = (t) => out.append(el('div', {}, t));
    line('AS path: ' + asPath(ev.as_path) + ' (normal: ' +
      (ev.normal_as_path.length ? asPath(ev.normal_as_path) : 'not learned yet') + ')');
    if (ev.rtt_dst_ms != null && ev.normal_rtt_dst_ms != null && ev.detour_ms != null) {
      line('detour: the destination answers in ' + ev.rtt_dst_ms.toFixed(1) + ' ms instead of ' +
        ev.normal_rtt_dst_ms.toFixed(1) + ' ms (' + (ev.detour_ms >= 0 ? '+' : '') + ev.detour_ms.toFixed(1) + ' ms)');
    }
    if (ev.rtt_ingress_ms != null) {
      const verdict = ev.ingress_abroad === true ? ', closer than the adversary\u2019s home country: a point of presence abroad'
        : ev.ingress_abroad === false ? ', far enough to be in the adversary\u2019s home country' : '';
      line('light speed: the ingress answered in ' + ev.rtt_ingress_ms.toFixed(2) + ' ms, so it lies within ' +
        km(ev.rtt_ingress_ms).toFixed(0) + ' km of the vantage' + verdict);
    }
    return out;
  }
  function hopCell(tr, h) {
    if (!h) { tr.append(el('td'), el('td'), el('td')); return; }
    const addr = h.addr || '*';
    const loc = h.addr && D.located[h.addr];
    tr.append(el('td', h.adversary ? { class: 'adv', title: 'in an adversary\u2019s network' } : {},
      (h.adversary ? '!' : '') + addr + (loc && loc.city ? ' (' + loc.city + ')' : '')));
    tr.append(el('td', {}, h.asn ? 'AS' + h.asn : '-'));
    tr.append(el('td', {}, ms(h.rtt_ms)));
  }
  function hopTable(r) {
    const ev = r.evidence;
    const t = el('table', { class: 'hops' });
    const head = el('tr');
    for (const c of ['TTL', 'normal path', 'AS', 'RTT', 'diverted path', 'AS', 'RTT', '']) head.append(el('th', {}, c));
    t.append(head);
    const ttls = [...new Set(ev.normal_path.concat(ev.diverted_path).map((h) => h.ttl))].sort((a, b) => a - b);
    let pastHandoff = false, ingressSeen = false;
    for (const ttl of ttls) {
      const n = ev.normal_path.find((h) => h.ttl === ttl);
      const d = ev.diverted_path.find((h) => h.ttl === ttl);
      let note = '';
      if (r.handoff.ttl === ttl) { note = '\u2190 hand-off: leaves the normal path'; pastHandoff = true; }
      else if (!ingressSeen && d && d.addr === r.ingress.addr) {
        note = '\u2190 ingress: first hop in the adversary\u2019s network';
        if (r.ingress.owner_rule === 'neighbour-numbered-port') note += ' (its port on the border link is numbered by the hand-off\u2019s AS)';
        ingressSeen = true;
      } else if (pastHandoff && d && d.adversary) note = '(adversary)';
      const tr = el('tr', {}, el('td', {}, String(ttl)));
      hopCell(tr, n);
      hopCell(tr, d);
      tr.append(el('td', { class: 'note' }, note));
      t.append(tr);
    }
    const last = el('tr', {}, el('td', {}, 'dst'), el('td', {}, r.target), el('td'), el('td', {}, ms(ev.normal_rtt_dst_ms)),
      el('td', {}, r.target), el('td'), el('td', {}, ms(ev.rtt_dst_ms)), el('td'));
    t.append(last);
    return t;
  }
  const MAX_ROWS = 400;
  function timeline(inc, recs) {
    const rows = recs.slice().sort((a, b) =>
      a.vantage.localeCompare(b.vantage) || a.target.localeCompare(b.target) || a.first_round - b.first_round);
    const keys = [...new Set(rows.map((r) => r.vantage + ' \u2192 ' + r.target))];
    const shown = keys.slice(0, MAX_ROWS);
    const rIdx = new Map(shown.map((k, i) => [k, i]));
    const r0 = rows.reduce((m, r) => Math.min(m, r.first_round), Infinity);
    const r1 = rows.reduce((m, r) => Math.max(m, r.last_round), -Infinity) + 1;
    const left = 230, rowH = 14, w = 900, h = shown.length * rowH + 30;
    const s = sv('svg', { class: 'timeline-svg', width: left + w + 20, height: h, 'data-incident': inc.id });
    const x = (round) => left + ((round - r0) / Math.max(1, r1 - r0)) * w;
    sv('line', { class: 'axis', x1: left, x2: left + w, y1: h - 20, y2: h - 20 }, s);
    const step = Math.max(1, Math.ceil((r1 - r0) / 10));
    for (let k = r0; k <= r1; k += step) {
      sv('line', { class: 'axis', x1: x(k), x2: x(k), y1: h - 22, y2: h - 18 }, s);
      sv('text', { x: x(k) - 4, y: h - 6 }, s).textContent = String(k);
    }
    shown.forEach((k, i) => {
      sv('text', { x: 0, y: i * rowH + 11 }, s).textContent = k;
    });
    for (const r of rows) {
      const i = rIdx.get(r.vantage + ' \u2192 ' + r.target);
      if (i === undefined) continue;
      title(sv('rect', {
        class: 'bar' + (r.active ? ' active' : ''), x: x(r.first_round), y: i * rowH + 2,
        width: Math.max(2, x(r.last_round + 1) - x(r.first_round)), height: rowH - 4,
      }, s), recordLine(r) + '; ' + utc(r.first_seen) + ' .. ' + utc(r.last_seen));
    }
    const box = el('div', {}, s);
    if (keys.length > shown.length) box.append(el('p', { class: 'muted' }, (keys.length - shown.length) + ' more pair(s) not shown.'));
    box.append(el('p', { class: 'muted' }, 'rounds ' + r0 + '..' + (r1 - 1) + '; a bar is an episode: from its first to its last diverted round (darker: still active).'));
    return box;
  }
  const list = (xs, n) => xs.slice(0, n).join(', ') + (xs.length > n ? ' and ' + (xs.length - n) + ' more' : '');
  const incBox = document.getElementById('incidents');
  for (const inc of D.incidents) {
    const recs = byIncident.get(inc.id) || [];
    const r = recs[0];
    const sec = el('section', { class: 'incident', id: 'incident-' + inc.id, 'data-incident': inc.id });
    sec.append(el('h2', {}, 'Incident ' + inc.id + ': ' + asLabel(inc.adversary_asn) + ' takes traffic in at ' + inc.ingress));
    if (r) {
      const place = r.ingress.city ? 'near ' + r.ingress.city + (r.ingress.city_country ? ', ' + r.ingress.city_country : '') : 'position unknown';
      const loc = r.ingress.loc && r.ingress.radius_km != null
        ? ' at (' + r.ingress.loc[0].toFixed(2) + ', ' + r.ingress.loc[1].toFixed(2) + ') \u00b1' + r.ingress.radius_km.toFixed(0) +
          ' km from ' + r.ingress.constraints + ' RTT constraints' : '';
      const ixp = r.ingress.ixp ? ', on the ' + r.ingress.ixp + ' exchange LAN' : '';
      const how = r.ingress.inferred ? ' (silent on these paths; named from other paths)' : '';
      sec.append(el('p', {}, 'ingress PoP: ' + place + loc + ixp + how));
    }
    sec.append(el('p', {}, 'seen ' + utc(inc.first_seen) + ' .. ' + utc(inc.last_seen) +
      (recs.some((x) => x.active) ? ' (still active)' : '')));
    sec.append(el('p', {}, inc.vantages.length + ' vantage(s): ' + list(inc.vantages, 30)));
    // One agent alone (broken, or lying) can make such an incident appear.
    if (!inc.corroborated) sec.append(el('p', { class: 'uncorroborated' }, 'not corroborated: seen by one vantage only (' + inc.vantages.join(', ') + ')'));
    sec.append(el('p', {}, inc.targets.length + ' target(s): ' + list(inc.targets, 30)));
    if (inc.handoffs.length) sec.append(el('p', {}, 'hand-off(s): ' + list(inc.handoffs, 30)));
    const tl = el('details', { class: 'timeline' }, el('summary', {}, 'Timeline: which pairs were diverted in which rounds'));
    tl.addEventListener('toggle', () => { if (tl.open && tl.children.length === 1) tl.append(timeline(inc, recs)); });
    const hops = el('details', { class: 'records' }, el('summary', {}, recs.length + ' record(s) with their hop tables'));
    hops.addEventListener('toggle', () => {
      if (!hops.open || hops.children.length > 1) return;
      for (const x of recs) {
        const d = el('details', { class: 'record' }, el('summary', {}, recordLine(x)));
        d.addEventListener('toggle', () => { if (d.open && d.children.length === 1) d.append(evidence(x), hopTable(x)); });
        hops.append(d);
      }
    });
    sec.append(tl, hops);
    sec.addEventListener('mouseenter', () => {
      svg.classList.add('hl');
      for (const p of svg.querySelectorAll('[data-incident="' + inc.id + '"]')) p.classList.add('on');
    });
    sec.addEventListener('mouseleave', () => {
      svg.classList.remove('hl');
      for (const p of svg.querySelectorAll('.on')) p.classList.remove('on');
    });
    incBox.append(sec);
  }
  // The first incident opens drawn, as the text report shows it.
  const first = incBox.querySelector('details.timeline');
  if (first) first.open = true;
  const firstRecs = incBox.querySelector('details.records');
  if (firstRecs) {
    firstRecs.open = true;
    firstRecs.dispatchEvent(new Event('toggle'));
    const rec = firstRecs.querySelector('details.record');
    if (rec) { rec.open = true; rec.dispatchEvent(new Event('toggle')); }
  }
  if (first) first.dispatchEvent(new Event('toggle'));
  if (D.incidents.length === 0) incBox.append(el('p', {}, 'No diversions in ' + D.traces + ' traces.'));
  document.body.setAttribute('data-rendered', 'true');
})();
