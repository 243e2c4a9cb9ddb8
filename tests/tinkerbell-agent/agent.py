"""A client of Tinkerbell's worker API, generated from Tinkerbell's own .proto files (edition
2023, compiled with grpcio-tools' protoc), that makes the calls Tinkerbell's agent makes, in its
order (tink/agent/agent.go and tink/agent/internal/transport/grpc): GetAction with the agent's
id and attributes; one RUNNING report, with the ids the action came with and no times; the
action; then its final report, with start, stop, duration and "action completed". NOT_FOUND
from GetAction means no work yet, and it asks again after a pause.

It does not run containers: an action whose image ends in ":fail" fails, any other succeeds.
Each ActionResponse is printed as one line of JSON (protobuf's JSON names) for the test to read.

usage: agent.py SERVER AGENT_ID ACTIONS TIMEOUT_SECONDS
"""

import datetime
import json
import os
import sys
import tempfile
import time

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_protos():
    """Tinkerbell's protos, compiled into a temporary package directory."""
    out = tempfile.mkdtemp(prefix="tinkerbell-proto-")
    proto_dir = os.path.join(HERE, "proto")
    files = sorted(f for f in os.listdir(proto_dir) if f.endswith(".proto"))
    # protoc's own copy of the well-known types (google/protobuf/timestamp.proto).
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if code != 0:
        sys.exit(f"protoc failed on Tinkerbell's protos ({code})")
    sys.path.insert(0, out)


def human_duration(seconds):
    """The agent's duration text, as Go's with two units ("3s120ms")."""
    millis = int(seconds * 1000)
    return f"{millis // 1000}s{millis % 1000}ms"


def main():
    server, agent_id, actions, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    compile_protos()
    import get_action_request_pb2 as request_pb2
    import report_action_status_request_pb2 as report_pb2
    import workflow_service_pb2_grpc as service

    stub = service.WorkflowServiceStub(grpc.insecure_channel(server))
    attributes = request_pb2.AgentAttributes(
        cpu=request_pb2.CPU(total_cores=2, total_threads=2),
        memory=request_pb2.Memory(total="2GiB", usable="2GiB"),
        block=[request_pb2.Block(name="nvme0n1", size="1GiB", serial_number="WISP-TEST-1")],
        network=[request_pb2.Network(name="eth0", mac=agent_id)],
    )
    deadline = time.monotonic() + timeout
    done = 0
    while done < actions:
        if time.monotonic() > deadline:
            sys.exit(f"only {done} of {actions} actions before the timeout")
        try:
            action = stub.GetAction(
                request_pb2.ActionRequest(agent_id=agent_id, agent_attributes=attributes)
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                time.sleep(0.5)
                continue
            sys.exit(f"GetAction: {err.code()}: {err.details()}")
        print(json.dumps(json_format.MessageToDict(action)), flush=True)

        def report(state, **times):
            return report_pb2.ActionStatusRequest(
                workflow_id=action.workflow_id,
                agent_id=action.agent_id,
                task_id=action.task_id,
                action_id=action.action_id,
                action_name=action.name,
                action_state=state,
                **times,
            )

        running = report(report_pb2.ActionStatusRequest.RUNNING)
        running.message.message = "running action"
        stub.ReportActionStatus(running)
        start = datetime.datetime.now(datetime.timezone.utc)
        failed = action.image.endswith(":fail")
        stop = datetime.datetime.now(datetime.timezone.utc)
        final = report(
            report_pb2.ActionStatusRequest.FAILED if failed else report_pb2.ActionStatusRequest.SUCCESS,
            execution_duration=human_duration((stop - start).total_seconds()),
        )
        final.execution_start.FromDatetime(start)
        final.execution_stop.FromDatetime(stop)
        final.message.message = "action completed"
        stub.ReportActionStatus(final)
        done += 1


if __name__ == "__main__":
    main()
