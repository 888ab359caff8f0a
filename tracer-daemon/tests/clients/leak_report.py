"""A gRPC client that is not ours: generates Python stubs from proto/tracer/v1/tracer.proto
with grpcio-tools and asks the daemon for a pod's leak report over its Unix socket.

usage: leak_report.py PROTO_ROOT SOCKET NAMESPACE/POD
Prints one JSON object: the report's stacks (innermost function, bytes, count) and the status
code an unknown pod gets."""
import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc


def main():
    proto_root, socket, pod = sys.argv[1], sys.argv[2], sys.argv[3]
    namespace, name = pod.split("/", 1)
    out = tempfile.mkdtemp()
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main([
        "protoc", f"-I{proto_root}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}", "tracer/v1/tracer.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out)
    from tracer.v1 import tracer_pb2, tracer_pb2_grpc  # noqa: E402 (generated above)

    # gRPC core would send the socket path as :authority, which HTTP/2 servers reject.
    channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.default_authority", "localhost")])
    stub = tracer_pb2_grpc.LeakTracerStub(channel)

    def request(namespace, name):
        selector = tracer_pb2.Selector(pod=tracer_pb2.PodName(namespace=namespace, name=name))
        return tracer_pb2.GetLeakReportRequest(selector=selector, top=100)

    report = stub.GetLeakReport(request(namespace, name), timeout=30)
    stacks = [
        {"function": s.frames[0].function if s.frames else "", "bytes": s.bytes, "count": s.count}
        for c in report.containers for s in c.stacks
    ]
    try:
        stub.GetLeakReport(request(namespace, "no-such-pod"), timeout=30)
        unknown = "OK"
    except grpc.RpcError as error:
        unknown = error.code().name
    # Without the authority option: the error the README quotes, so a user can search for it.
    bare = tracer_pb2_grpc.LeakTracerStub(grpc.insecure_channel(f"unix://{socket}"))
    try:
        bare.GetLeakReport(request(namespace, name), timeout=30)
        without_authority = "OK"
    except grpc.RpcError as error:
        without_authority = f"{error.code()} {error.details()}"
    print(json.dumps({"pod": f"{report.pod.namespace}/{report.pod.name}", "stacks": stacks,
                      "unknown_pod_status": unknown,
                      "without_authority": without_authority}))


if __name__ == "__main__":
    main()
