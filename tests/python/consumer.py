#!/usr/bin/env python3
"""A tracemesh consumer written with another stack's stock gRPC library (grpcio), with
stubs generated from proto/ at run time. Lists agents and streams a campaign's traces.

usage: consumer.py DATA_DIR CAMPAIGN_ID [--identity FILE] [--expect-traces N]
                   [--expect-agents N] [--expect-read-only]
DATA_DIR is the coordinator's data directory (its coordinator.addr and ca/ca.pem);
--identity is the client bundle (default DATA_DIR/admin.pem; a reader made with
`tracemesh identity create --role reader` is all a consumer needs). With
--expect-read-only, every write it tries must be refused with PERMISSION_DENIED.
"""
import argparse
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")


def generate_stubs(out):
    files = [os.path.join("tracemesh", "v1", f)
             for f in sorted(os.listdir(os.path.join(PROTO_ROOT, "tracemesh", "v1")))
             if f.endswith(".proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"error: protoc failed ({rc})")
    sys.path.insert(0, out)


def split_pem(text):
    blocks, cur = [], []
    for line in text.splitlines(keepends=True):
        cur.append(line)
        if line.startswith("-----END "):
            blocks.append("".join(cur))
            cur = []
    return blocks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("campaign")
    ap.add_argument("--expect-traces", type=int, default=0)
    ap.add_argument("--expect-agents", type=int, default=0)
    ap.add_argument("--identity")
    ap.add_argument("--expect-read-only", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        generate_stubs(tmp)
        from tracemesh.v1 import campaign_pb2, consumer_pb2, consumer_pb2_grpc

        addr = open(os.path.join(args.data_dir, "coordinator.addr")).read().strip()
        identity = args.identity or os.path.join(args.data_dir, "admin.pem")
        blocks = split_pem(open(identity).read())
        key = "".join(b for b in blocks if "PRIVATE KEY" in b).encode()
        certs = [b for b in blocks if "CERTIFICATE" in b]
        ca = open(os.path.join(args.data_dir, "ca", "ca.pem")).read().encode()
        leaf = certs[0].encode()
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                             certificate_chain=leaf)
        channel = grpc.secure_channel(
            addr, creds, options=[("grpc.ssl_target_name_override", "tracemesh-coordinator")])
        stub = consumer_pb2_grpc.ConsumerServiceStub(channel)

        agents = stub.ListAgents(consumer_pb2.ListAgentsRequest(), timeout=10).agents
        for a in agents:
            print(f"agent {a.metadata.name} country={a.metadata.country} connected={a.connected}")
        n = 0
        for rec in stub.QueryTraces(consumer_pb2.QueryTracesRequest(campaign_id=args.campaign),
                                    timeout=30):
            n += 1
            if n <= 3:
                hops = [h.addr if h.HasField("addr") else "*" for h in rec.hops]
                print(f"trace {rec.result_id} vantage={rec.vantage} hops={hops}")
        print(f"{len(agents)} agents, {n} traces streamed")
        if args.expect_read_only:
            writes = {
                "CreateToken": lambda: stub.CreateToken(consumer_pb2.CreateTokenRequest(
                    metadata=consumer_pb2.AgentMetadata(name="py-sneaky")), timeout=10),
                "CreateCampaign": lambda: stub.CreateCampaign(consumer_pb2.CreateCampaignRequest(
                    spec=campaign_pb2.CampaignSpec(targets=["192.0.2.1"], agents=["all"])),
                    timeout=10),
                "CancelCampaign": lambda: stub.CancelCampaign(
                    consumer_pb2.CancelCampaignRequest(id=args.campaign), timeout=10),
            }
            for name, call in writes.items():
                try:
                    call()
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                        sys.exit(f"error: {name} failed with {e.code()}, not PERMISSION_DENIED")
                    print(f"{name}: PERMISSION_DENIED ({e.details()})")
                else:
                    sys.exit(f"error: {name} succeeded with a read-only identity")
        if len(agents) < args.expect_agents or n < args.expect_traces:
            sys.exit(f"error: expected at least {args.expect_agents} agents and "
                     f"{args.expect_traces} traces")


if __name__ == "__main__":
    main()
