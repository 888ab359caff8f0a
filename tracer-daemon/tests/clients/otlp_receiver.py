"""An OTLP profiles receiver built from the official generated code (PyPI's opentelemetry-proto,
collector/profiles/v1development) served with grpcio: decodes every ExportProfilesServiceRequest
the agent sends and appends it, resolved through its dictionary, as one JSON line to OUT:
{"resources": [{"attributes": {...}, "profiles": [{"type": ..., "unit": ..., "time_unix_nano":
..., "attributes": {...}, "samples": [{"values": [...], "stack": [[name, ...], ...]}]}]}]}
where a stack is leaf first and each location lists its lines' function names (inlined callees
first). Usage: otlp_receiver.py PORT OUT; prints "listening PORT" once serving."""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def decode(request):
    d = request.dictionary
    strings = d.string_table

    def stack(index):
        locations = d.stack_table[index].location_indices
        return [
            [strings[d.function_table[line.function_index].name_strindex] for line in d.location_table[i].lines]
            for i in locations
        ]

    def attributes(indices):
        return {strings[d.attribute_table[i].key_strindex]: any_value(d.attribute_table[i].value) for i in indices}

    resources = []
    for resource_profiles in request.resource_profiles:
        profiles = []
        for scope in resource_profiles.scope_profiles:
            for profile in scope.profiles:
                profiles.append(
                    {
                        "scope": scope.scope.name,
                        "type": strings[profile.sample_type.type_strindex],
                        "unit": strings[profile.sample_type.unit_strindex],
                        "time_unix_nano": profile.time_unix_nano,
                        "attributes": attributes(profile.attribute_indices),
                        "samples": [
                            {"values": list(sample.values), "stack": stack(sample.stack_index)}
                            for sample in profile.samples
                        ],
                    }
                )
        resources.append(
            {
                "attributes": {kv.key: any_value(kv.value) for kv in resource_profiles.resource.attributes},
                "profiles": profiles,
            }
        )
    return {"resources": resources}


class Receiver(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        # Written before answering: what the agent counts as sent is on disk.
        self.out.write(json.dumps(decode(request)) + "\n")
        self.out.flush()
        return profiles_service_pb2.ExportProfilesServiceResponse()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "a", encoding="utf-8") as out:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(Receiver(out), server)
        if server.add_insecure_port(f"127.0.0.1:{port}") != port:
            sys.exit(f"cannot listen on 127.0.0.1:{port}")
        server.start()
        print(f"listening {port}", flush=True)
        server.wait_for_termination()


if __name__ == "__main__":
    main()
