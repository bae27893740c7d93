"""moto's server as the SQS endpoint, over real HTTP, and a queue on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer


@dataclass
class Queue:
    """A queue on moto's server: its URL, a client, and what is in it."""

    url: str
    endpoint: str
    client: Any

    def send(self, body: str) -> str:
        """Enqueue ``body``; its SQS MessageId."""
        return str(self.client.send_message(QueueUrl=self.url, MessageBody=body)["MessageId"])

    def count(self) -> int:
        """Messages in the queue, visible or in flight (not deleted)."""
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


@contextmanager
def moto_queue(monkeypatch: pytest.MonkeyPatch, visibility_s: int = 1) -> Iterator[Queue]:
    """Start moto's server on port 0 and create a queue whose messages come back
    ``visibility_s`` after a receive that did not delete them; boto3 clients made
    in the test (and services started in it) use that server for SQS."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        client = boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint)
        # moto keeps its state per process, not per server: a queue of its own.
        url = client.create_queue(
            QueueName=f"mailpipe-feedback-{uuid.uuid4().hex}",
            Attributes={"VisibilityTimeout": str(visibility_s)},
        )["QueueUrl"]
        try:
            yield Queue(url, endpoint, client)
        finally:
            client.delete_queue(QueueUrl=url)
    finally:
        server.stop()
