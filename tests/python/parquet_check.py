"""Reads a `tracemesh export --format parquet` directory with DuckDB and with Apache
Spark (local mode) and checks both against the CLI's `traces --json` (annotated with the
same prefix table): trace count, hop count, answered hops per origin AS, and the Hive
date partitions.

usage: parquet_check.py PARQUET_DIR TRACES_JSONL [--no-spark]
"""
import collections
import datetime
import json
import sys
import time


def expected(path):
    traces = [json.loads(l) for l in open(path) if l.strip()]
    hops = sum(len(t["hops"]) for t in traces)
    per_as = collections.Counter(
        h.get("asn") for t in traces for h in t["hops"] if h["addr"] is not None
    )
    dates = collections.Counter(
        datetime.datetime.fromtimestamp(t["start"], datetime.timezone.utc).strftime("%Y-%m-%d")
        for t in traces
    )
    return len(traces), hops, dict(per_as), dict(dates)


def check(engine, got, want):
    names = ("traces", "hops", "answered hops per AS", "traces per date partition")
    for name, g, w in zip(names, got, want):
        if g != w:
            sys.exit(f"{engine}: {name} differ: parquet {g!r} vs CLI {w!r}")
    print(f"{engine}: {got[0]} traces, {got[1]} hops, {len(got[2])} origin ASes "
          f"({sum(got[2].values())} answered hops), {len(got[3])} date partitions: equal to the CLI")


def duckdb_counts(d):
    import duckdb

    src = f"read_parquet('{d}/*/*.parquet', hive_partitioning = true)"
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    hops = con.execute(f"SELECT count(*) FROM (SELECT unnest(hops) AS h FROM {src})").fetchone()[0]
    per_as = dict(con.execute(
        f"SELECT h.asn, count(*) FROM (SELECT unnest(hops) AS h FROM {src}) "
        "WHERE h.addr IS NOT NULL GROUP BY 1").fetchall())
    dates = dict(con.execute(f"SELECT CAST(date AS VARCHAR), count(*) FROM {src} GROUP BY 1").fetchall())
    return n, hops, per_as, dates


def spark_counts(d):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (SparkSession.builder.master("local[1]").appName("tracemesh-parquet")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(d)
    n = df.count()
    hops = df.select(F.explode("hops").alias("h"))
    nh = hops.count()
    per_as = {r[0]: r[1] for r in hops.where("h.addr IS NOT NULL").groupBy("h.asn").count().collect()}
    dates = {r[0]: r[1] for r in df.groupBy("date").count().collect()}
    spark.stop()
    return n, nh, per_as, dates


def main():
    d, traces = sys.argv[1], sys.argv[2]
    want = expected(traces)
    t0 = time.time()
    check("duckdb", duckdb_counts(d), want)
    print(f"duckdb: {time.time() - t0:.1f} s")
    if "--no-spark" not in sys.argv:
        t0 = time.time()
        check("spark", spark_counts(d), want)
        print(f"spark: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
