import socket

from django.core.management.base import BaseCommand

from gateway import mock_upstream


class Command(BaseCommand):
    help = "Serve a fake OpenAI- and Anthropic-shaped upstream (demo, tests, benchmarks). See gateway/mock_upstream/."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--fd", type=int, help="Serve on this inherited, listening socket instead of --host/--port.")
        parser.add_argument("--delay-ms", type=int, default=0, help="Wait this long before each response.")
        parser.add_argument("--stream-chunk-delay-ms", type=int, default=0, help="Wait this long between stream events.")

    def handle(self, port, host, fd, delay_ms, stream_chunk_delay_ms, **options):
        sock = None
        if fd is not None:
            sock = socket.socket(fileno=fd)
            host, port = sock.getsockname()[:2]
        self.stderr.write(f"Mock upstream on http://{host}:{port} (OpenAI at /v1, Anthropic at /)")
        mock_upstream.run(port, host, delay_ms, stream_chunk_delay_ms, sock=sock)
