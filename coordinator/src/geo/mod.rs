//! Positions on the Earth: great-circle distance, RTT-constrained multilateration
//! (constraint-based geolocation) and the nearest city of a gazetteer.

use serde::{Deserialize, Serialize};

pub const EARTH_RADIUS_KM: f64 = 6371.0;
/// Half the circumference: no two points are farther apart.
pub const MAX_DISTANCE_KM: f64 = std::f64::consts::PI * EARTH_RADIUS_KM;

/// Hard upper bound on distance per millisecond of *round-trip* time. Light in fibre
/// travels at about 2/3 c ≈ 200 km/ms one way, so an RTT of r ms bounds the distance to
/// r/2 × 200 = 100·r km. We deliberately keep this physical bound rather than a tighter
/// empirical one (Katz-Bassett et al., IMC 2006, found 4/9 c typical): a tighter bound
/// makes discs miss the truth whenever a path happens to be straight, and a missed
/// truth is worse for triangulation than a larger radius.
pub const KM_PER_MS_RTT: f64 = 100.0;

/// A position; serialises as `[lat, lon]` as the diversion report format expects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl From<[f64; 2]> for GeoPoint {
    fn from(v: [f64; 2]) -> Self {
        GeoPoint {
            lat: v[0],
            lon: v[1],
        }
    }
}

impl From<GeoPoint> for [f64; 2] {
    fn from(p: GeoPoint) -> Self {
        [p.lat, p.lon]
    }
}

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Self {
        GeoPoint { lat, lon }
    }

    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }

    fn to_unit(self) -> [f64; 3] {
        let (la, lo) = (self.lat.to_radians(), self.lon.to_radians());
        [la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()]
    }

    fn from_unit(v: [f64; 3]) -> Option<GeoPoint> {
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if !norm.is_finite() || norm < 1e-12 {
            return None;
        }
        let (x, y, z) = (v[0] / norm, v[1] / norm, v[2] / norm);
        Some(GeoPoint {
            lat: z.clamp(-1.0, 1.0).asin().to_degrees(),
            lon: y.atan2(x).to_degrees(),
        })
    }
}

/// Haversine great-circle distance in km.
pub fn great_circle_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.lat.to_radians(),
        a.lon.to_radians(),
        b.lat.to_radians(),
        b.lon.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// The point `dist_km` from `p` along initial bearing `bearing_deg`.
pub fn destination_point(p: GeoPoint, bearing_deg: f64, dist_km: f64) -> GeoPoint {
    let d = dist_km / EARTH_RADIUS_KM;
    let (la, lo, b) = (
        p.lat.to_radians(),
        p.lon.to_radians(),
        bearing_deg.to_radians(),
    );
    let la2 = (la.sin() * d.cos() + la.cos() * d.sin() * b.cos())
        .clamp(-1.0, 1.0)
        .asin();
    let lo2 = lo + (b.sin() * d.sin() * la.cos()).atan2(d.cos() - la.sin() * la2.sin());
    let mut lon = lo2.to_degrees();
    lon = (lon + 540.0).rem_euclid(360.0) - 180.0;
    GeoPoint {
        lat: la2.to_degrees(),
        lon,
    }
}

/// Upper bound on the distance to something answering after `rtt_ms`.
pub fn rtt_radius_km(rtt_ms: f64) -> f64 {
    (rtt_ms.max(0.0) * KM_PER_MS_RTT).min(MAX_DISTANCE_KM)
}

/// "The target lies within `radius_km` of `center`."
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disc {
    pub center: GeoPoint,
    pub radius_km: f64,
}

impl Disc {
    pub fn from_rtt(center: GeoPoint, rtt_ms: f64) -> Disc {
        Disc {
            center,
            radius_km: rtt_radius_km(rtt_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub loc: GeoPoint,
    /// Radius of a disc around `loc` that holds the whole feasible region.
    pub radius_km: f64,
    pub constraints: usize,
    /// False when the discs have no common point (bad vantage metadata, congestion
    /// never shrinks RTTs, so this means a lie somewhere); the estimate is then the
    /// least-violating region and `radius_km` includes the violation.
    pub consistent: bool,
}

const RINGS: usize = 24;
const SPOKES: usize = 72;

fn sample_disc(center: GeoPoint, radius_km: f64) -> Vec<GeoPoint> {
    let mut pts = Vec::with_capacity(RINGS * SPOKES / 2 + 1);
    pts.push(center);
    for i in 1..=RINGS {
        let r = radius_km * i as f64 / RINGS as f64;
        let spokes = (SPOKES * i).div_ceil(RINGS).max(6);
        for j in 0..spokes {
            pts.push(destination_point(
                center,
                360.0 * j as f64 / spokes as f64,
                r,
            ));
        }
    }
    pts
}

fn violation(p: GeoPoint, discs: &[Disc]) -> f64 {
    discs
        .iter()
        .map(|d| great_circle_km(p, d.center) - d.radius_km)
        .fold(f64::NEG_INFINITY, f64::max)
}

fn centroid(points: &[GeoPoint]) -> Option<GeoPoint> {
    let mut s = [0.0; 3];
    for p in points {
        let u = p.to_unit();
        s[0] += u[0];
        s[1] += u[1];
        s[2] += u[2];
    }
    GeoPoint::from_unit(s)
}

/// One pass: sample the search disc, keep the feasible (or least-violating) samples.
fn pass(search: Disc, discs: &[Disc]) -> Option<(GeoPoint, f64, bool)> {
    let step = search.radius_km / RINGS as f64;
    let scored: Vec<(GeoPoint, f64)> = sample_disc(search.center, search.radius_km)
        .into_iter()
        .map(|p| (p, violation(p, discs)))
        .collect();
    let best = scored.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    if !best.is_finite() {
        return None;
    }
    let consistent = best <= 0.0;
    let cutoff = if consistent { 0.0 } else { best + step };
    let keep: Vec<GeoPoint> = scored
        .iter()
        .filter(|(_, v)| *v <= cutoff)
        .map(|(p, _)| *p)
        .collect();
    let c = centroid(&keep)?;
    let extent = keep
        .iter()
        .map(|p| great_circle_km(c, *p))
        .fold(0.0, f64::max);
    let radius = extent + step + if consistent { 0.0 } else { best.max(0.0) };
    Some((c, radius, consistent))
}

/// Constraint-based multilateration: the centroid of the intersection of all discs,
/// with the radius of a disc covering that intersection. Two passes: a coarse one over
/// the smallest disc, then a finer one around the first estimate, since intersections
/// are often slivers much smaller than any one disc.
pub fn multilaterate(discs: &[Disc]) -> Option<Estimate> {
    let discs: Vec<Disc> = discs
        .iter()
        .filter(|d| d.center.is_valid() && d.radius_km.is_finite() && d.radius_km >= 0.0)
        .map(|d| Disc {
            center: d.center,
            radius_km: d.radius_km.min(MAX_DISTANCE_KM),
        })
        .collect();
    let smallest = discs
        .iter()
        .min_by(|a, b| a.radius_km.total_cmp(&b.radius_km))?;
    // A disc of radius 0 is a point; give the sampler something to sample.
    let first = Disc {
        center: smallest.center,
        radius_km: smallest.radius_km.max(1.0),
    };
    let (c1, r1, ok1) = pass(first, &discs)?;
    let (loc, radius_km, consistent) = if r1 < first.radius_km * 0.5 {
        pass(
            Disc {
                center: c1,
                radius_km: (r1 * 1.2).max(1.0),
            },
            &discs,
        )
        .filter(|(_, _, ok)| *ok || !ok1)
        .unwrap_or((c1, r1, ok1))
    } else {
        (c1, r1, ok1)
    };
    Some(Estimate {
        loc,
        // A consistent region lies inside every disc, so never beyond the smallest.
        radius_km: if consistent {
            radius_km.min(smallest.radius_km.max(1.0)).max(1.0)
        } else {
            radius_km.max(1.0)
        },
        constraints: discs.len(),
        consistent,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct City {
    pub name: String,
    pub country: String,
    pub iata: String,
    pub loc: GeoPoint,
    /// Airports with an IATA code within 50 km: a proxy for the size of the metro.
    pub weight: u32,
    /// Internet exchanges in the city (from PeeringDB when loaded): where networks
    /// actually meet, so the better hub signal.
    pub exchanges: u32,
    /// Interconnection facilities known in the metro (carrier hotels, data centres:
    /// the built-in metro table, PeeringDB facilities when loaded). Where a metro has
    /// them, `loc` is where they are, not where its airports are.
    pub facilities: u32,
}

impl City {
    /// Whether networks are known to interconnect here (an exchange or a facility).
    fn is_hub(&self) -> bool {
        self.exchanges + self.facilities > 0
    }

    /// How likely a point of presence is here, before any measurement. Airports say how
    /// big a city is, not where networks meet (Paris counts seven, Frankfurt, the larger
    /// interconnection hub, two), so they count only while no exchange data is loaded.
    fn hub_score(&self, count_airports: bool) -> f64 {
        let airports = if count_airports { self.weight } else { 0 };
        f64::from(airports + 3 * self.exchanges + 3 * self.facilities).ln_1p()
    }
}

/// Parses `city<TAB>country<TAB>lat<TAB>lon<TAB>facility` rows (with a header line).
pub fn parse_metros(text: &str) -> Result<Vec<(String, String, GeoPoint)>, GazetteerError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |m: &str| GazetteerError {
            line: i + 1,
            message: m.to_owned(),
        };
        let f: Vec<&str> = line.split('\t').collect();
        let [city, country, lat, lon, ..] = f.as_slice() else {
            return Err(err("expected city, country, lat, lon, facility"));
        };
        let lat: f64 = lat.trim().parse().map_err(|_| err("bad latitude"))?;
        let lon: f64 = lon.trim().parse().map_err(|_| err("bad longitude"))?;
        let p = GeoPoint::new(lat, lon);
        if !p.is_valid() {
            return Err(err("coordinates out of range"));
        }
        out.push(((*city).to_owned(), (*country).to_owned(), p));
    }
    Ok(out)
}

/// Typical speed of a path relative to the physical bound of [`KM_PER_MS_RTT`]:
/// Katz-Bassett et al. (IMC 2006) found 4/9 c a good fit for real paths, against the
/// 2/3 c of light in fibre. Used only to *prefer* positions, never to exclude them.
pub const TYPICAL_SPEED_FRACTION: f64 = 2.0 / 3.0;

/// How much nearer than an RTT step suggests a link's far end may be without penalty:
/// 2 ms of ICMP slow path at the typical speed of a path (~133 km).
pub const SLOW_PATH_SLACK_KM: f64 = 2.0 * KM_PER_MS_RTT * TYPICAL_SPEED_FRACTION;

/// Below this radius the measurements speak for themselves and no prior is applied.
pub const PRIOR_MIN_RADIUS_KM: f64 = 150.0;

/// "Probably about `expected_km` from `center`": the soft constraint a single link's RTT
/// step gives (the far end of a link that adds r ms is most likely r × typical speed
/// away from its near end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ring {
    pub center: GeoPoint,
    pub expected_km: f64,
    pub sigma_km: f64,
}

/// Cities with coordinates, for naming the place nearest to an estimate.
#[derive(Debug, Clone, Default)]
pub struct Gazetteer {
    cities: Vec<City>,
}

#[derive(Debug, thiserror::Error)]
#[error("gazetteer line {line}: {message}")]
pub struct GazetteerError {
    pub line: usize,
    pub message: String,
}

const BUILTIN_CITIES: &str = include_str!("../../data/cities.tsv");
/// Where networks meet in the main interconnection metros: a carrier hotel or data
/// centre district per metro (`city, country, lat, lon, facility`).
const BUILTIN_METROS: &str = include_str!("../../data/metros.tsv");

impl Gazetteer {
    /// The committed gazetteer derived from `airportsdata` (see `data/README.md`).
    pub fn builtin() -> Gazetteer {
        // The embedded file is checked by a unit test, so a parse failure here would be
        // a build defect; fall back to an empty gazetteer rather than panic.
        let mut g = Gazetteer::parse_tsv(BUILTIN_CITIES).unwrap_or_else(|e| {
            tracing::error!(error = %e, "built-in gazetteer unreadable");
            Gazetteer::default()
        });
        match parse_metros(BUILTIN_METROS) {
            Ok(m) => g.add_facilities(m.iter().map(|(c, cc, p)| (c.as_str(), cc.as_str(), *p))),
            Err(e) => tracing::error!(error = %e, "built-in metro table unreadable"),
        }
        g
    }

    /// Places metros where their interconnection facilities are: each `(city, country,
    /// position)` moves its city (matched as exchanges are) to the mean position of its
    /// facilities and counts them toward the city's hub score; a facility in a city the
    /// gazetteer lacks adds that city. Airports are where gazetteers put cities; routers
    /// sit in carrier hotels and data centres, often tens of km away.
    pub fn add_facilities<'a>(
        &mut self,
        facilities: impl IntoIterator<Item = (&'a str, &'a str, GeoPoint)>,
    ) {
        let mut placed: Vec<(usize, f64, f64, u32)> = Vec::new();
        for (city, country, p) in facilities {
            let hits = self.match_city(city, country);
            // The nearest of several same-named cities within reach, if any.
            let hit = hits
                .into_iter()
                .map(|i| (i, great_circle_km(self.cities[i].loc, p)))
                .filter(|(_, d)| *d <= 100.0)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            match hit {
                Some(i) => match placed.iter_mut().find(|x| x.0 == i) {
                    Some(x) => {
                        x.1 += p.lat;
                        x.2 += p.lon;
                        x.3 += 1;
                    }
                    None => placed.push((i, p.lat, p.lon, 1)),
                },
                None => {
                    let name = city.split(',').next().unwrap_or(city).trim();
                    if name.is_empty() {
                        continue;
                    }
                    self.cities.push(City {
                        name: name.to_owned(),
                        country: country.trim().to_uppercase(),
                        iata: String::new(),
                        loc: p,
                        weight: 1,
                        exchanges: 0,
                        facilities: 0,
                    });
                    placed.push((self.cities.len() - 1, p.lat, p.lon, 1));
                }
            }
        }
        for (i, lat, lon, n) in placed {
            let c = &mut self.cities[i];
            c.loc = GeoPoint::new(lat / f64::from(n), lon / f64::from(n));
            c.facilities += n;
        }
    }

    /// `city<TAB>country<TAB>iata<TAB>lat<TAB>lon`, with a header line.
    pub fn parse_tsv(text: &str) -> Result<Gazetteer, GazetteerError> {
        let mut cities = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let err = |m: &str| GazetteerError {
                line: i + 1,
                message: m.to_owned(),
            };
            let f: Vec<&str> = line.split('\t').collect();
            let (name, country, iata, lat, lon, weight) = match f.as_slice() {
                [n, c, i, la, lo] => (n, c, i, la, lo, "1"),
                [n, c, i, la, lo, w] => (n, c, i, la, lo, *w),
                _ => return Err(err("expected 5 or 6 tab-separated fields")),
            };
            let weight: u32 = weight.trim().parse().map_err(|_| err("bad weight"))?;
            let lat: f64 = lat.trim().parse().map_err(|_| err("bad latitude"))?;
            let lon: f64 = lon.trim().parse().map_err(|_| err("bad longitude"))?;
            let loc = GeoPoint::new(lat, lon);
            if !loc.is_valid() {
                return Err(err("coordinates out of range"));
            }
            cities.push(City {
                name: (*name).to_owned(),
                country: (*country).to_owned(),
                iata: (*iata).to_owned(),
                loc,
                weight,
                exchanges: 0,
                facilities: 0,
            });
        }
        Ok(Gazetteer { cities })
    }

    pub fn from_cities(cities: Vec<City>) -> Gazetteer {
        Gazetteer { cities }
    }

    pub fn len(&self) -> usize {
        self.cities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cities.is_empty()
    }

    /// The nearest city and its distance in km.
    pub fn nearest(&self, p: GeoPoint) -> Option<(&City, f64)> {
        self.cities
            .iter()
            .map(|c| (c, great_circle_km(p, c.loc)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Cities a free-text PeeringDB-style city name may mean ("San Jose, CA",
    /// "Frankfurt"): the part before a comma or `&`, matched exactly first, else as a
    /// leading word ("Frankfurt" → "Frankfurt am Main"), within the country.
    fn match_city(&self, city: &str, country: &str) -> Vec<usize> {
        let key = city
            .split([',', '&', '/', '('])
            .next()
            .unwrap_or("")
            .split(" and ")
            .next()
            .unwrap_or("")
            .trim()
            .to_lowercase();
        if key.is_empty() {
            return Vec::new();
        }
        let same_country = |c: &City| c.country.eq_ignore_ascii_case(country.trim());
        let exact: Vec<usize> = (0..self.cities.len())
            .filter(|&i| same_country(&self.cities[i]) && self.cities[i].name.to_lowercase() == key)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        (0..self.cities.len())
            .filter(|&i| {
                let n = self.cities[i].name.to_lowercase();
                same_country(&self.cities[i])
                    && (n.starts_with(&format!("{key} ")) || key.starts_with(&format!("{n} ")))
            })
            .collect()
    }

    /// Counts exchanges per city from `(city, country)` pairs, one per exchange (e.g.
    /// PeeringDB `ix` objects). PeeringDB cities are free text ("San Jose, CA",
    /// "Frankfurt"), so the part before a comma or `&` is matched against city names,
    /// exactly first, else as a leading word ("Frankfurt" → "Frankfurt am Main").
    pub fn add_exchange_cities<'a>(
        &mut self,
        exchanges: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (city, country) in exchanges {
            let hits = self.match_city(city, country);
            for i in hits {
                self.cities[i].exchanges += 1;
            }
        }
    }

    /// When RTTs leave a wide feasible region, the most plausible city inside it:
    /// points of presence sit in big metros (Octant, NSDI 2007, used population density
    /// the same way), and `rings` from link RTT steps say how far along a path they
    /// probably are. Returns `None` when the region is already tight or holds no city.
    pub fn hub_prior(&self, est: &Estimate, discs: &[Disc], rings: &[Ring]) -> Option<&City> {
        if est.radius_km < PRIOR_MIN_RADIUS_KM {
            return None;
        }
        let feasible = |p: GeoPoint| {
            discs
                .iter()
                .all(|d| great_circle_km(p, d.center) <= d.radius_km + 1.0)
        };
        let inside: Vec<&City> = self
            .cities
            .iter()
            .filter(|c| great_circle_km(c.loc, est.loc) <= est.radius_km * 1.05 + 10.0)
            .filter(|c| !est.consistent || feasible(c.loc))
            .collect();
        // Points of presence sit where networks interconnect: when the region holds an
        // exchange or facility city, only those are candidates. The rest of the
        // gazetteer is airports (Metz/Frescaty, an air base, once beat Frankfurt for a
        // router there), kept for regions that hold no hub at all.
        let hubs = inside.iter().any(|c| c.is_hub());
        // Exchanges loaded (PeeringDB): the prior weighs interconnection alone.
        let count_airports = !self.cities.iter().any(|c| c.exchanges > 0);
        inside
            .into_iter()
            .filter(|c| !hubs || c.is_hub())
            .map(|c| {
                let mut score = c.hub_score(count_airports);
                for r in rings {
                    // An RTT step overstates a link's length by the far end's ICMP slow
                    // path (a few ms at most, whatever the length) and by a longer way
                    // back: a metro up to that much nearer than the step suggests is as
                    // likely as one at the suggested distance.
                    let d = great_circle_km(c.loc, r.center);
                    let near = r.expected_km - SLOW_PATH_SLACK_KM;
                    let z = if d > r.expected_km {
                        (d - r.expected_km) / r.sigma_km.max(1.0)
                    } else if d < near {
                        (near - d) / r.sigma_km.max(1.0)
                    } else {
                        0.0
                    };
                    score -= 0.5 * z * z;
                }
                let z = great_circle_km(c.loc, est.loc) / est.radius_km.max(1.0);
                (c, score - 0.5 * z * z)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
    }

    /// Distance from `p` to the nearest listed city of `country`: a lower bound on how
    /// far anything inside that country is, used to show that a hop answered too fast
    /// to be in its AS's home country.
    pub fn nearest_in_country(&self, p: GeoPoint, country: &str) -> Option<(&City, f64)> {
        self.cities
            .iter()
            .filter(|c| c.country.eq_ignore_ascii_case(country))
            .map(|c| (c, great_circle_km(p, c.loc)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TORONTO: GeoPoint = GeoPoint {
        lat: 43.6772,
        lon: -79.6306,
    };
    const OTTAWA: GeoPoint = GeoPoint {
        lat: 45.3225,
        lon: -75.6692,
    };
    const CHICAGO: GeoPoint = GeoPoint {
        lat: 41.97694,
        lon: -87.90815,
    };

    #[test]
    fn distances_match_known_values() {
        let d = great_circle_km(TORONTO, OTTAWA);
        assert!((d - 361.0).abs() < 10.0, "{d}");
        assert!(great_circle_km(TORONTO, TORONTO) < 1e-9);
        let antipode = great_circle_km(GeoPoint::new(0.0, 0.0), GeoPoint::new(0.0, 180.0));
        assert!((antipode - MAX_DISTANCE_KM).abs() < 1.0);
        let p = destination_point(TORONTO, 45.0, 500.0);
        assert!((great_circle_km(TORONTO, p) - 500.0).abs() < 0.5);
    }

    #[test]
    fn multilateration_finds_a_point_seen_from_three_sides() {
        let truth = TORONTO;
        let discs: Vec<Disc> = [OTTAWA, CHICAGO, GeoPoint::new(40.64, -73.78)]
            .iter()
            .map(|v| Disc {
                center: *v,
                radius_km: great_circle_km(*v, truth) * 1.05 + 5.0,
            })
            .collect();
        let e = multilaterate(&discs).unwrap();
        assert!(e.consistent);
        let err = great_circle_km(e.loc, truth);
        assert!(err < 150.0, "error {err} km");
        assert!(
            e.radius_km >= err,
            "radius {} must cover truth at {err}",
            e.radius_km
        );
    }

    #[test]
    fn a_near_vantage_dominates() {
        let discs = [
            Disc::from_rtt(GeoPoint::new(43.6532, -79.3832), 0.5),
            Disc::from_rtt(OTTAWA, 6.0),
        ];
        let e = multilaterate(&discs).unwrap();
        assert!(great_circle_km(e.loc, TORONTO) < 60.0);
        assert!(e.radius_km <= 60.0);
    }

    #[test]
    fn inconsistent_discs_still_give_an_estimate() {
        let discs = [
            Disc::from_rtt(TORONTO, 1.0),
            Disc::from_rtt(GeoPoint::new(48.85, 2.35), 1.0),
        ];
        let e = multilaterate(&discs).unwrap();
        assert!(!e.consistent);
        assert!(e.radius_km > 1000.0);
        assert!(multilaterate(&[]).is_none());
    }

    #[test]
    fn builtin_gazetteer_parses_and_names_cities() {
        let g = Gazetteer::parse_tsv(BUILTIN_CITIES).unwrap();
        assert!(g.len() > 5000);
        let (c, d) = g.nearest(GeoPoint::new(37.3630, -121.9286)).unwrap();
        assert_eq!(c.name, "San Jose");
        assert!(d < 15.0, "{d}");
        let (_, d_cn) = g.nearest_in_country(TORONTO, "CN").unwrap();
        assert!(d_cn > 5000.0);
        assert!(Gazetteer::parse_tsv("h\nx\tCA\tYYZ\t91\t0\n").is_err());
    }

    fn city(name: &str, cc: &str, lat: f64, lon: f64, weight: u32) -> City {
        City {
            name: name.into(),
            country: cc.into(),
            iata: String::new(),
            loc: GeoPoint::new(lat, lon),
            weight,
            exchanges: 0,
            facilities: 0,
        }
    }

    #[test]
    fn facilities_move_a_city_to_where_they_are_and_count_as_hub_weight() {
        let mut g = Gazetteer::from_cities(vec![city("Toronto", "CA", 43.6777, -79.6248, 2)]);
        let before = g.cities[0].hub_score(true);
        g.add_facilities([
            ("Toronto", "CA", GeoPoint::new(43.6446, -79.3849)),
            ("Toronto, ON", "CA", GeoPoint::new(43.6480, -79.3900)),
            // Too far for the same city: a new one.
            ("Toronto", "CA", GeoPoint::new(45.0, -75.0)),
            ("Vint Hill", "US", GeoPoint::new(38.74, -77.67)),
        ]);
        let t = &g.cities[0];
        assert!(great_circle_km(t.loc, GeoPoint::new(43.6463, -79.3875)) < 0.5);
        assert_eq!(t.facilities, 2);
        assert!(t.hub_score(true) > before);
        assert_eq!(g.cities.len(), 3);
        assert!(
            g.cities
                .iter()
                .any(|c| c.name == "Vint Hill" && c.facilities == 1)
        );
    }

    #[test]
    fn metros_sit_at_their_carrier_hotels_not_their_airports() {
        let g = Gazetteer::builtin();
        let at = |name: &str, cc: &str| {
            g.cities
                .iter()
                .find(|c| c.name == name && c.country == cc)
                .map(|c| (c.loc, c.facilities))
                .unwrap()
        };
        // Telehouse Docklands; the airport-derived point was ~20 km north-west.
        let (london, f) = at("London", "GB");
        assert!(great_circle_km(london, GeoPoint::new(51.5117, -0.0014)) < 1.0);
        assert!(f >= 1);
        // Frankfurt's data centres, not FRA; Ashburn added though it has no airport.
        let (fra, _) = at("Frankfurt am Main", "DE");
        assert!(great_circle_km(fra, GeoPoint::new(50.0264, 8.5431)) > 10.0);
        assert!(
            g.cities
                .iter()
                .any(|c| c.name == "Ashburn" && c.facilities >= 1)
        );
        // Every metro row found a city or made one.
        let metros = parse_metros(BUILTIN_METROS).unwrap();
        assert!(metros.len() > 80);
        assert!(
            metros
                .iter()
                .all(|(c, cc, _)| g.cities.iter().any(|x| x.country == *cc
                    && x.facilities > 0
                    && (x.name.eq_ignore_ascii_case(c)
                        || c.starts_with(&x.name)
                        || x.name.starts_with(c.as_str()))))
        );
    }

    #[test]
    fn hub_prior_prefers_big_metros_on_the_ring_inside_the_region() {
        let mut g = Gazetteer::from_cities(vec![
            city("San Jose", "US", 37.36, -121.93, 3),
            city("Salt Lake City", "US", 40.79, -111.98, 3),
            city("Boise", "US", 43.56, -116.22, 3),
            city("Vancouver", "CA", 49.19, -123.18, 3),
        ]);
        g.add_exchange_cities([
            ("San Jose, CA", "US"),
            ("San Jose & Los Angeles", "US"),
            ("Frankfurt", "DE"),
        ]);
        let seattle = GeoPoint::new(47.45, -122.31);
        let discs = [Disc::from_rtt(seattle, 17.0)];
        let est = multilaterate(&discs).unwrap();
        let ring = Ring {
            center: seattle,
            expected_km: 1100.0,
            sigma_km: 330.0,
        };
        assert_eq!(g.hub_prior(&est, &discs, &[ring]).unwrap().name, "San Jose");
        // Without a ring or exchanges, Boise (nearer the middle of the region) is as good.
        let plain = Gazetteer::from_cities(vec![
            city("San Jose", "US", 37.36, -121.93, 3),
            city("Boise", "US", 43.56, -116.22, 3),
        ]);
        assert_eq!(plain.hub_prior(&est, &discs, &[]).unwrap().name, "Boise");
        // A tight region needs no prior.
        let tight = multilaterate(&[Disc::from_rtt(seattle, 0.5)]).unwrap();
        assert!(g.hub_prior(&tight, &discs, &[ring]).is_none());
    }

    #[test]
    fn a_region_with_an_interconnection_city_picks_one_not_an_airport() {
        // The README demo's Frankfurt router: 5.1 ms from Zurich, 7.9 ms from Paris and
        // Geneva. A town of many airfields nearer the middle of that region scores as
        // high as Frankfurt's airports and carrier hotels together.
        let discs = [
            Disc::from_rtt(GeoPoint::new(47.37, 8.54), 5.1),
            Disc::from_rtt(GeoPoint::new(48.86, 2.35), 7.9),
            Disc::from_rtt(GeoPoint::new(46.20, 6.14), 7.9),
        ];
        let est = multilaterate(&discs).unwrap();
        let mut frankfurt = city("Frankfurt am Main", "DE", 50.12, 8.74, 2);
        let metz = city("Metz/Frescaty", "FR", 49.07, 6.13, 5);
        let airports = Gazetteer::from_cities(vec![frankfurt.clone(), metz.clone()]);
        assert_eq!(
            airports.hub_prior(&est, &discs, &[]).unwrap().name,
            "Metz/Frescaty"
        );
        frankfurt.facilities = 1;
        let g = Gazetteer::from_cities(vec![frankfurt, metz]);
        assert_eq!(
            g.hub_prior(&est, &discs, &[]).unwrap().name,
            "Frankfurt am Main"
        );
    }

    #[test]
    fn airports_do_not_outweigh_exchanges_once_exchanges_are_known() {
        // Seen 10 ms from London, 9.5 ms past a London router: Frankfurt fits the step,
        // Paris (seven airports to Frankfurt's two) lies nearer than it suggests.
        let london = GeoPoint::new(51.51, -0.0);
        let discs = [Disc::from_rtt(london, 10.0)];
        let est = multilaterate(&discs).unwrap();
        let ring = Ring {
            center: london,
            expected_km: rtt_radius_km(9.5) * TYPICAL_SPEED_FRACTION,
            sigma_km: 0.3 * rtt_radius_km(9.5) * TYPICAL_SPEED_FRACTION,
        };
        let cities = || {
            vec![
                city("Paris", "FR", 48.86, 2.38, 7),
                city("Frankfurt am Main", "DE", 50.12, 8.74, 2),
            ]
        };
        // Without exchange data, the airports are all there is to size a city by.
        let plain = Gazetteer::from_cities(cities());
        assert_eq!(
            plain.hub_prior(&est, &discs, &[ring]).unwrap().name,
            "Paris"
        );
        // An exchange each: the measurements decide, not the airports.
        let mut g = Gazetteer::from_cities(cities());
        g.add_exchange_cities([("Paris", "FR"), ("Frankfurt", "DE")]);
        assert_eq!(
            g.hub_prior(&est, &discs, &[ring]).unwrap().name,
            "Frankfurt am Main"
        );
    }

    #[test]
    fn geopoint_serialises_as_pair() {
        let s = serde_json::to_string(&GeoPoint::new(1.5, -2.0)).unwrap();
        assert_eq!(s, "[1.5,-2.0]");
    }
}
