"""A generic gRPC client: knows nothing of slipstream but what reflection tells it.

Usage: grpc_client.py TARGET   (e.g. unix:///run/slipstream/ctl.sock)

Prints three lines of JSON: the services the server lists, the health of the System
service, and the answer to slipstream.v1.System/GetStatus, called through message classes
built from the descriptors the server sent.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main(target):
    # grpc-core derives :authority from a unix: target's path, which HTTP/2 servers may
    # refuse as malformed; name it plainly.
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", "localhost")])
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**kw):
        return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)]), timeout=10)))

    services = sorted(s.name for s in ask(list_services="").list_services_response.service)
    print(json.dumps(services))

    pool = descriptor_pool.DescriptorPool()
    pending = {}

    def fetch(**kw):
        for raw in ask(**kw).file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            pending.setdefault(fd.name, fd)

    fetch(file_containing_symbol="slipstream.v1.System")
    fetch(file_containing_symbol="grpc.health.v1.Health")
    added = set()
    while len(added) < len(pending):
        progress = False
        for name, fd in list(pending.items()):
            if name in added:
                continue
            missing = [d for d in fd.dependency if d not in added]
            for d in missing:
                if d not in pending:
                    fetch(file_by_filename=d)
            if all(d in added for d in fd.dependency):
                pool.Add(fd)
                added.add(name)
                progress = True
        if not progress and len(added) < len(pending):
            raise SystemExit("unresolvable descriptors: %s" % sorted(set(pending) - added))

    def call(service, method, body=None):
        m = pool.FindServiceByName(service).FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        rpc = channel.unary_unary(
            "/%s/%s" % (service, method),
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        req = req_cls()
        if body:
            json_format.ParseDict(body, req)
        return json_format.MessageToDict(rpc(req, timeout=10))

    print(json.dumps(call("grpc.health.v1.Health", "Check", {"service": "slipstream.v1.System"})))
    print(json.dumps(call("slipstream.v1.System", "GetStatus")))


if __name__ == "__main__":
    main(sys.argv[1])
