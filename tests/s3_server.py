"""moto's standalone S3 server on 127.0.0.1 (a real HTTP endpoint speaking the S3 protocol), for the
object-storage tests and bench/bench_object_storage.py.

    with s3_server() as endpoint:   # "http://127.0.0.1:PORT"; ImportError without moto, OSError if it cannot start
        ...                         # set AWS_ENDPOINT_URL=endpoint (and any keys) for pyarrow to reach it
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


def patch_complete_upload() -> None:
    """moto answers CompleteMultipartUpload with a <CompleteMultipartUploadResponse> root where S3 sends
    <CompleteMultipartUploadResult>; Arrow's client takes the former for an error. Rename it, so the server
    speaks what S3 speaks."""
    from moto.s3.responses import S3Response

    original = S3Response._key_response_post
    if getattr(original, "pktnin_patched", False):
        return

    def post(self, *args, **kwargs):
        status, headers, body = original(self, *args, **kwargs)
        if isinstance(body, bytes):
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        elif isinstance(body, str):
            body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        return status, headers, body

    post.pktnin_patched = True  # type: ignore[attr-defined]
    S3Response._key_response_post = post


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server in this process (threads) on a free port of 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    patch_complete_upload()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # noqa: BLE001 - a port, a thread, a missing web package: it cannot serve
        raise OSError(f"moto's S3 server could not start on 127.0.0.1: {exc}") from exc
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
