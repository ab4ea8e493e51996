"""A client of the Controller service for the CLIs (``loadgate watch``, ``approve``, ``abort``).

    client = ControllerClient(address, token_file=None, tls_dir=None)
    client.stub.GetRun(request, metadata=client.metadata, timeout=...)
    client.close()

``tls_dir`` holds ``loadgate certs init`` files: the client presents the controller's
certificate (the CA signs both sides).  ``translate(rpc_error)`` turns a gRPC failure into
the LoadgateError the CLI reports: a refused request is a ConfigError (exit 3), an
unreachable or failing controller an InfrastructureError (exit 4).
"""
import grpc

from loadgate.controller.certs import grpc_channel_credentials, read_token
from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.proto.loadgate.v1 import controller_pb2_grpc

# Codes that mean "the request was wrong", not "the controller is unwell".
_REQUEST_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS}
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


class ControllerClient:
    def __init__(self, address, token_file=None, tls_dir=None):
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        if tls_dir:
            self.channel = grpc.secure_channel(address, grpc_channel_credentials(tls_dir),
                                               options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.metadata = (("authorization", f"Bearer {read_token(token_file)}"),) \
            if token_file else ()
        self.stub = controller_pb2_grpc.ControllerStub(self.channel)
        self.address = address

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def translate(error, address):
    """The LoadgateError a CLI raises for a failed call to the controller at address."""
    code = error.code() if hasattr(error, "code") else None
    message = f"controller {address}: {error.details() if hasattr(error, 'details') else error}"
    if code in _REQUEST_CODES:
        return ConfigError(f"{message} ({code.name})")
    return InfrastructureError(f"{message} ({code.name if code else 'failed'})")


def add_connection_arguments(parser, required=False):
    """--controller, --token-file, --tls-dir on a CLI parser."""
    parser.add_argument("--controller", required=required, metavar="ADDR",
                        help="the controller service, HOST:PORT")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token-file", help="bearer token the controller requires")
    group.add_argument("--tls-dir", help="`loadgate certs init` directory: mutual TLS")
